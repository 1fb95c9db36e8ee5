"""`compare`: every combination of a config's grid and the command line's, over several seeds.

Each run trains into DIR/runs/<combination>/seed-<seed>. A finished run of the same resolved config is
reused and an unfinished one resumed, so an interrupted comparison picks up where it stopped; a run
folder made by another config is trained again. Every combination is parsed, and its losses and miners
checked against their classes, before the first run: a grid that cannot run makes no folder. The
leaderboard goes to DIR/leaderboard.{csv,md}.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedlab.config import ConfigError, ExperimentConfig, expand_grid, parse_config
from embedlab.losses.registry import check_loss_arguments, check_miner_arguments
from embedlab.reporting.leaderboard import (
    LeaderboardRow,
    build_leaderboard,
    ranked_metrics,
    write_leaderboard,
)
from embedlab.reporting.runs import COMPARISON_FILE, comparison_run_dir
from embedlab.training.fit import fit
from embedlab.training.objective import check_memory_size
from embedlab.training.optimizers import check_optimizer_name
from embedlab.training.run_dir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    SUMMARY_FILE,
    write_json,
)


@dataclass
class Comparison:
    out_dir: Path
    rows: list[LeaderboardRow]
    metrics: list[str]
    csv_path: Path
    markdown_path: Path


@dataclass(frozen=True)
class RunStart:
    """What `on_run` is told as a run starts: it is run `number` (from 1) of `total`."""

    number: int
    total: int
    combination: str
    seed: int
    run_dir: Path


def _same_config(run_dir: Path, cfg: ExperimentConfig) -> bool:
    path = run_dir / CONFIG_FILE
    return path.is_file() and path.read_text() == cfg.to_yaml()


def _finished_summary(run_dir: Path, cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The summary of a finished run of this very config, or None (then the run is trained again)."""
    summary_path = run_dir / SUMMARY_FILE
    if summary_path.is_file() and _same_config(run_dir, cfg):
        return json.loads(summary_path.read_text())
    return None


def check_combinations(
    raw_config: Mapping[str, Any], grid: Sequence[tuple[str, list[Any]]] = ()
) -> list[tuple[str, ExperimentConfig]]:
    """Every combination of the grid, parsed, with each loss and miner checked against its class.

    Raises ConfigError naming the first combination that cannot run, before any run folder is made.
    """
    combinations = list(expand_grid(raw_config, grid))
    configs = [(label, parse_config(variant, f"combination {label!r}")) for label, variant in combinations]
    labels = [label for label, _ in configs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two combinations share a name: {labels}")
    for label, cfg in configs:
        try:
            for spec in cfg.losses():
                check_loss_arguments(spec.name, spec.kwargs())
                check_memory_size(spec.name, spec.memory_size)
                miner = spec.miner or cfg.miner
                if miner is not None:
                    check_miner_arguments(miner.name, miner.kwargs())
            check_optimizer_name(cfg.optimizer.name)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"combination {label!r} cannot run: {error}") from None
    return configs


def compare(
    raw_config: Mapping[str, Any],
    out_dir: str | Path,
    *,
    grid: Sequence[tuple[str, list[Any]]] = (),
    seeds: int = 1,
    progress: bool = True,
    on_run: Callable[[RunStart], None] | None = None,
) -> Comparison:
    """Train every combination for `seeds` seeds (train.seed, train.seed + 1, ...) and rank them;
    `on_run` hears of each run before it starts (or is reused)."""
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    out_dir = Path(out_dir)
    configs = check_combinations(raw_config, grid)
    labels = [label for label, _ in configs]
    results: list[tuple[str, int, dict[str, Any]]] = []
    for label, cfg in configs:
        for offset in range(seeds):
            seed = cfg.train.seed + offset
            run_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})})
            run_dir = comparison_run_dir(out_dir, label, seed)
            if on_run is not None:
                on_run(RunStart(len(results) + 1, len(configs) * seeds, label, seed, run_dir))
            summary = _finished_summary(run_dir, run_cfg)
            if summary is None:
                resume = (
                    _same_config(run_dir, run_cfg) and (run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT).is_file()
                )
                summary = fit(run_cfg, run_dir, resume=resume, force=not resume, progress=progress).summary
            results.append((label, seed, summary))
    available = set.intersection(*(set(s["metrics"]) for _, _, s in results))
    metrics = ranked_metrics(available)
    rows = build_leaderboard(results, metrics)
    csv_path, md_path = write_leaderboard(rows, metrics, out_dir)
    write_json(
        out_dir / COMPARISON_FILE,
        {
            "combinations": labels,
            "seeds": seeds,
            "runs": [{"combination": c, "seed": s} for c, s, _ in results],
        },
    )
    return Comparison(out_dir, rows, metrics, csv_path, md_path)
