"""A run's per-epoch history, metrics.csv: one row per epoch, read by resumes and reports.

`epoch` counts epochs trained: the row of epoch N is written after N epochs. Epoch 0, when there is one,
is the zero-shot row (`stage` zero_shot): the backbone's pooled features scored before any training
(train.zero_shot), with step 0, train_seconds 0 and no training loss. Every other row has `stage` train.
Cells of what was not measured (the metrics of an epoch without validation, the zero-shot row's loss)
are empty.

Kept apart from the callbacks so that reading a history (a report, a comparison) imports neither torch
nor Lightning.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: `stage` of the zero-shot row (epoch 0) and of the rows of trained epochs.
ZERO_SHOT_STAGE = "zero_shot"
TRAIN_STAGE = "train"


def _header(path: Path) -> list[str] | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with path.open(newline="") as stream:
        return next(csv.reader(stream), None)


def append_history(path: Path, row: dict[str, Any]) -> None:
    """Append a row to metrics.csv, writing the header with the first row; a row whose columns are not
    the file's is a ValueError (the file's column order is kept)."""
    header = _header(path)
    if header is not None and set(header) != set(row):
        raise ValueError(
            f"{path} has the columns {header}, but the row to append has {list(row)}; "
            "a run folder's metrics.csv takes the rows of one run only"
        )
    with path.open("a", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=header or list(row))
        if header is None:
            writer.writeheader()
        writer.writerow({k: (float(v) if isinstance(v, np.floating) else v) for k, v in row.items()})


def _from_before_zero_shot(row: dict[str, str]) -> dict[str, str]:
    """A row of a metrics.csv written before the zero-shot row existed (no `stage`, epochs from 0), in
    today's form: its epoch counted from 1, `stage` train."""
    rest = {k: v for k, v in row.items() if k != "epoch"}
    return {"epoch": str(int(row["epoch"]) + 1), "stage": TRAIN_STAGE, **rest}


def read_history(path: Path) -> list[dict[str, str]]:
    """The rows of metrics.csv (none when there is no file). Rows of runs made before the zero-shot row
    existed are read as today's (see `_from_before_zero_shot`)."""
    if not path.exists():
        return []
    with path.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    if rows and "stage" not in rows[0]:
        rows = [_from_before_zero_shot(row) for row in rows]
    return rows


def truncate_history(path: Path, epochs_trained: int) -> None:
    """Keep the rows a resumed run does not write again: the zero-shot row and epochs 1..epochs_trained
    (those written after the last checkpoint are trained again). A file of a run made before the
    zero-shot row existed is rewritten in today's form, so that the rows appended next fit its header."""
    current = _header(path)
    if current is None:
        return
    rows = read_history(path)
    kept = [r for r in rows if int(r["epoch"]) <= epochs_trained]
    if len(kept) == len(rows) and "stage" in current:
        return
    with path.open("w", newline="") as stream:
        if kept:
            writer = csv.DictWriter(stream, fieldnames=list(kept[0]))
            writer.writeheader()
            writer.writerows(kept)


def zero_shot_row(rows: Sequence[dict[str, str]]) -> dict[str, str] | None:
    """The zero-shot row of a history, or None."""
    return next((row for row in rows if row.get("stage") == ZERO_SHOT_STAGE), None)


def training_rows(rows: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The rows of trained epochs, in order (the zero-shot row left out)."""
    return [row for row in rows if row.get("stage") != ZERO_SHOT_STAGE]
