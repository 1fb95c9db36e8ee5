"""What summary.json says of a run's metrics against its zero-shot row (metrics.csv's epoch 0).

The zero-shot row scores the pretrained backbone's pooled features before any training (train.zero_shot,
models/zero_shot.py). A run whose monitored metric ends below it made the embedding worse than the
features it started from, and its summary says so in `warnings`, which `embedlab train` prints and the
report shows.

Reads rows only: neither torch nor Lightning is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from embedlab.training.history import training_rows, zero_shot_row

ZERO_SHOT_MEANING = "the pretrained backbone's pooled features, scored before the first epoch"


def _values(row: dict[str, str] | None, metrics: Sequence[str]) -> dict[str, float]:
    if not row:
        return {}
    return {name: float(row[name]) for name in metrics if row.get(name, "") != ""}


def below_zero_shot_warnings(
    monitor: str,
    zero_shot: float,
    final: float,
    final_epoch: int,
    best: float,
    best_epoch: int,
) -> list[str]:
    """A sentence when the monitored metric ended below its zero-shot value (none otherwise); it also
    says whether the best checkpoint is below it."""
    if not final < zero_shot:
        return []
    if best < zero_shot:
        return [
            f"{monitor} ended at {final:.4f} after epoch {final_epoch} and never reached its zero-shot "
            f"value {zero_shot:.4f} ({ZERO_SHOT_MEANING}): the best epoch, {best_epoch}, scored "
            f"{best:.4f}. Fine-tuning made the embedding worse than the features it started from; try a "
            "lower optimizer.lr, a warm-up (scheduler.warmup_epochs) or fewer epochs"
        ]
    return [
        f"{monitor} ended at {final:.4f} after epoch {final_epoch}, below its zero-shot value "
        f"{zero_shot:.4f} ({ZERO_SHOT_MEANING}); the best checkpoint, epoch {best_epoch} at {best:.4f}, "
        "is above it"
    ]


def history_summary(rows: Sequence[dict[str, str]], metrics: Sequence[str], monitor: str) -> dict[str, Any]:
    """summary.json's metric entries from metrics.csv's rows: the last trained epoch's `metrics`, the
    `best_epoch` (epochs trained, of the best scored training row: best.ckpt's) and its `best_metrics`,
    the `zero_shot_metrics` (None without a zero-shot row) and the `warnings`."""
    trained = training_rows(rows)
    last = trained[-1] if trained else None
    scored = [r for r in trained if r.get(monitor, "") != ""]
    best = max(scored, key=lambda r: float(r[monitor])) if scored else None
    zero_shot = zero_shot_row(rows)
    final_values, best_values = _values(last, metrics), _values(best, metrics)
    zero_shot_values = _values(zero_shot, metrics)
    warnings: list[str] = []
    if last is not None and best is not None and monitor in zero_shot_values and monitor in final_values:
        warnings = below_zero_shot_warnings(
            monitor,
            zero_shot_values[monitor],
            final_values[monitor],
            int(last["epoch"]),
            best_values[monitor],
            int(best["epoch"]),
        )
    return {
        "metrics": final_values,
        "best_epoch": int(best["epoch"]) if best else None,
        "best_metrics": best_values,
        "zero_shot_metrics": zero_shot_values if zero_shot is not None else None,
        "warnings": warnings,
    }
