"""Training curves: each validation metric and the training loss, by epoch and by training time.

One line per combination: the mean over its seeds, with a band from the lowest to the highest seed
(with 2 to 5 seeds a range says more than a standard deviation). Time is the cumulative training time
of metrics.csv (evaluation excluded), averaged over the seeds at each epoch, so "which converges
faster" is read against the compute each combination spent.

Epoch 0, where the runs have it, is the zero-shot row (metrics.csv, training/history.py): the
backbone's pooled features before any training, at 0 training seconds. It is drawn as a star, so that
where fine-tuning started from is read off every metric panel.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from embedlab.reporting.runs import RunRecord, leaderboard_metrics, load_runs
from embedlab.training.history import ZERO_SHOT_STAGE

LOSS_COLUMN = "train_loss"
CURVES_FILE = "curves.png"


@dataclass(frozen=True)
class Curve:
    """One combination's curve of one column: arrays of shape (E,) over the epochs any seed recorded.

    epoch: epochs trained (1 = after the first; 0 = the zero-shot row, before training). seconds: mean
    cumulative training seconds at that epoch. mean / low / high: mean, minimum and maximum over the
    seeds that recorded a value.
    """

    combination: str
    column: str
    epoch: np.ndarray
    seconds: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    seeds: int


def _value(text: str | None) -> float:
    """A metrics.csv cell: empty on epochs without validation."""
    return float(text) if text not in (None, "") else math.nan


def aggregate_curves(runs: Sequence[RunRecord], column: str) -> list[Curve]:
    """The curve of `column` for every combination, in the order the combinations first appear."""
    by_combination: dict[str, list[RunRecord]] = {}
    for run in runs:
        by_combination.setdefault(run.combination, []).append(run)
    curves = []
    for combination, seeds in by_combination.items():
        points: dict[int, list[tuple[float, float]]] = {}
        for run in seeds:
            for row in run.history:
                value = _value(row.get(column))
                if not math.isnan(value):
                    points.setdefault(int(row["epoch"]), []).append((_value(row["train_seconds"]), value))
        epochs = sorted(points)
        if not epochs:
            continue
        values = [np.array([v for _, v in points[e]]) for e in epochs]
        curves.append(
            Curve(
                combination=combination,
                column=column,
                epoch=np.array(epochs),
                seconds=np.array([np.mean([s for s, _ in points[e]]) for e in epochs]),
                mean=np.array([v.mean() for v in values]),
                low=np.array([v.min() for v in values]),
                high=np.array([v.max() for v in values]),
                seeds=len(seeds),
            )
        )
    return curves


#: How the zero-shot point (epoch 0) is marked, on the panels and in the legend.
ZERO_SHOT_MARKER = {"marker": "*", "markersize": 11, "linestyle": "none"}
ZERO_SHOT_LABEL = "epoch 0 (star): zero-shot, the backbone's pooled features before training"


def _draw(axes: Axes, x: np.ndarray, curve: Curve, colour: str) -> Artist:
    """The mean line and its band; a single epoch has no line, so its range is an error bar. A
    zero-shot point (epoch 0) is starred."""
    if curve.epoch[0] == 0:
        axes.plot(x[:1], curve.mean[:1], color=colour, **ZERO_SHOT_MARKER)
    if x.size == 1:
        below, above = curve.mean - curve.low, curve.high - curve.mean
        return axes.errorbar(x, curve.mean, yerr=[below, above], fmt="o", color=colour, capsize=4)
    axes.fill_between(x, curve.low, curve.high, color=colour, alpha=0.18, linewidth=0)
    return axes.plot(x, curve.mean, marker="o", markersize=3, color=colour)[0]


def plot_curves(runs: Sequence[RunRecord], metrics: Sequence[str]) -> Figure:
    """A figure with one row per column (the training loss, then `metrics`), by epoch and by time."""
    columns = [LOSS_COLUMN, *metrics]
    combinations = list(dict.fromkeys(run.combination for run in runs))
    # A fixed layout in inches: constrained layout measured every label of every panel and took most
    # of a report's time. The legend band on top grows with the number of combinations.
    zero_shot = any(row.get("stage") == ZERO_SHOT_STAGE for run in runs for row in run.history)
    legend, panel, bottom = 0.6 + 0.2 * (len(combinations) + zero_shot), 2.7, 0.55
    height = legend + panel * len(columns) + bottom
    figure = Figure(figsize=(11, height))
    figure.subplots_adjust(
        left=0.07, right=0.98, top=1 - legend / height, bottom=bottom / height, wspace=0.18, hspace=0.62
    )
    grid = figure.subplots(len(columns), 2, squeeze=False)
    handles: dict[str, Artist] = {}
    for row, column in enumerate(columns):
        by_epoch, by_time = grid[row]
        curves = aggregate_curves(runs, column)
        for curve in curves:
            # matplotlib's default cycle (tab10), fixed per combination so every panel agrees
            colour = f"C{combinations.index(curve.combination) % 10}"
            handles[curve.combination] = _draw(by_epoch, curve.epoch, curve, colour)
            _draw(by_time, curve.seconds, curve, colour)
        label = column
        if column == LOSS_COLUMN and curves and all((c.low > 0).all() for c in curves):
            # Losses of different functions differ by orders of magnitude; a log axis shows each
            # one's relative decrease instead of flattening the small ones.
            by_epoch.set_yscale("log")
            by_time.set_yscale("log")
            label = f"{column} (log scale)"
        by_epoch.set_title(f"{label} by epoch", fontsize=10)
        by_time.set_title(f"{label} by training time", fontsize=10)
        starred = zero_shot and column != LOSS_COLUMN  # the zero-shot row has no training loss
        by_epoch.set_xlabel("epochs trained" + (" (0: zero-shot, before training)" if starred else ""))
        by_time.set_xlabel("training seconds (cumulative, evaluation excluded)")
        for axes in (by_epoch, by_time):
            axes.grid(alpha=0.3)
            axes.tick_params(labelsize=8)
        by_epoch.xaxis.get_major_locator().set_params(integer=True)
    seeds = sorted({sum(1 for r in runs if r.combination == c) for c in handles})
    labels = [textwrap.shorten(name, 110) for name in handles]
    artists = list(handles.values())
    if zero_shot:
        artists.append(Line2D([], [], color="grey", **ZERO_SHOT_MARKER))
        labels.append(ZERO_SHOT_LABEL)
    figure.legend(
        artists,
        labels,
        loc="upper center",
        ncols=1,
        fontsize=9,
        title=f"mean over {'/'.join(map(str, seeds))} seed(s); band and bars: lowest to highest seed",
        title_fontsize=9,
        frameon=False,
    )
    return figure


def write_run_curves(run_dir: str | Path) -> Path:
    """RUN_DIR/curves.png: the curves of a single run, as a comparison's report draws them."""
    run_dir = Path(run_dir)
    [run] = load_runs(run_dir)
    path = run_dir / CURVES_FILE
    plot_curves([run], leaderboard_metrics([run])).savefig(path, dpi=100)
    return path
