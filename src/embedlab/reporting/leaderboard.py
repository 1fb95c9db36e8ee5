"""The leaderboard of a comparison: one row per combination, mean and standard deviation over seeds."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from embedlab.atomic import atomic_write_text

#: Columns besides the metrics: training time and throughput, averaged over seeds like the metrics.
COST_COLUMNS = ("train_seconds", "images_per_second")

#: The leaderboard's metric columns, when the runs compute them.
LEADERBOARD_METRICS = ("precision_at_1", "recall_at_5", "r_precision", "map_at_r", "map")


def ranked_metrics(available: set[str]) -> list[str]:
    """The metrics a leaderboard ranks by: its own columns that every run computed, else all of them."""
    return [m for m in LEADERBOARD_METRICS if m in available] or sorted(available)


@dataclass
class LeaderboardRow:
    combination: str
    seeds: list[int]
    values: dict[str, list[float]] = field(default_factory=dict)

    def mean(self, column: str) -> float:
        values = self.values.get(column, [])
        return statistics.fmean(values) if values else math.nan

    def std(self, column: str) -> float:
        values = self.values.get(column, [])
        return statistics.stdev(values) if len(values) > 1 else 0.0


def build_leaderboard(
    runs: Sequence[tuple[str, int, dict[str, Any]]], metrics: Sequence[str], sort_by: str = "map_at_r"
) -> list[LeaderboardRow]:
    """Group (combination, seed, summary) by combination; rows sorted by the mean of `sort_by`, best first."""
    rows: dict[str, LeaderboardRow] = {}
    for combination, seed, summary in runs:
        row = rows.setdefault(combination, LeaderboardRow(combination, []))
        row.seeds.append(seed)
        for name in metrics:
            row.values.setdefault(name, []).append(float(summary["metrics"][name]))
        for name in COST_COLUMNS:
            row.values.setdefault(name, []).append(float(summary[name]))
    key = sort_by if sort_by in metrics else metrics[0]
    return sorted(rows.values(), key=lambda r: -r.mean(key))


def write_leaderboard(
    rows: Sequence[LeaderboardRow], metrics: Sequence[str], out_dir: Path
) -> tuple[Path, Path]:
    """DIR/leaderboard.csv (mean and std columns) and DIR/leaderboard.md (mean ± std)."""
    columns = [*metrics, *COST_COLUMNS]
    csv_path, md_path = out_dir / "leaderboard.csv", out_dir / "leaderboard.md"
    header = ["rank", "combination", "seeds"]
    for column in columns:
        header += [f"{column}_mean", f"{column}_std"]
    lines: list[list[Any]] = []
    for rank, row in enumerate(rows, start=1):
        line: list[Any] = [rank, row.combination, len(row.seeds)]
        for column in columns:
            line += [f"{row.mean(column):.6g}", f"{row.std(column):.6g}"]
        lines.append(line)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(lines)

    md = ["| rank | combination | seeds | " + " | ".join(columns) + " |"]
    md.append("|---|---|---|" + "---|" * len(columns))
    for rank, row in enumerate(rows, start=1):
        cells = [format_cell(row, column) for column in columns]
        md.append(f"| {rank} | {row.combination} | {len(row.seeds)} | " + " | ".join(cells) + " |")
    atomic_write_text(md_path, "\n".join(md) + "\n")
    return csv_path, md_path


def format_cell(row: LeaderboardRow, column: str) -> str:
    """`mean ± std` of a column (the mean alone for one seed): 4 decimals, 1 for time and throughput."""
    digits = 1 if column in COST_COLUMNS else 4
    text = f"{row.mean(column):.{digits}f}"
    if len(row.seeds) > 1:
        text += f" ± {row.std(column):.{digits}f}"
    return text


def leaderboard_table(
    rows: Sequence[LeaderboardRow], metrics: Sequence[str], title: str = "leaderboard"
) -> Table:
    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("combination")
    for column in [*metrics, *COST_COLUMNS]:
        table.add_column(column, justify="right")
    for rank, row in enumerate(rows, start=1):
        table.add_row(str(rank), row.combination, *[format_cell(row, c) for c in [*metrics, *COST_COLUMNS]])
    return table
