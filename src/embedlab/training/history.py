"""A run's per-epoch history, metrics.csv: one row per epoch, read by resumes and reports.

Kept apart from the callbacks so that reading a history (a report, a comparison) imports neither torch
nor Lightning.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np


def append_history(path: Path, row: dict[str, Any]) -> None:
    """Append a row to metrics.csv, writing the header with the first row."""
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow({k: (float(v) if isinstance(v, np.floating) else v) for k, v in row.items()})


def read_history(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def truncate_history(path: Path, first_epoch_to_drop: int) -> None:
    """Drop rows of epochs a resumed run will train again (written after its last checkpoint)."""
    rows = read_history(path)
    kept = [r for r in rows if int(r["epoch"]) < first_epoch_to_drop]
    if len(kept) == len(rows):
        return
    with path.open("w", newline="") as stream:
        if kept:
            writer = csv.DictWriter(stream, fieldnames=list(kept[0]))
            writer.writeheader()
            writer.writerows(kept)
