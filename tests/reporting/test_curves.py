"""Training curves: the mean and the seed range per epoch, the time axis, the figure, and `train`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from embedlab.cli import app
from embedlab.config import ExperimentConfig
from embedlab.reporting.curves import aggregate_curves, plot_curves
from embedlab.reporting.runs import RunRecord
from embedlab.training.fit import RunResult


def _run(
    combination: str, seed: int, rows: list[tuple[float, float, str]], zero_shot: str | None = None
) -> RunRecord:
    """rows: (train_seconds, train_loss, map_at_r) per trained epoch, from epoch 1; map_at_r is empty when
    not validated. zero_shot: map_at_r of a zero-shot row (epoch 0), if the run has one."""
    history = [
        {"epoch": str(e), "stage": "train", "train_seconds": str(s), "train_loss": str(loss), "map_at_r": m}
        for e, (s, loss, m) in enumerate(rows, start=1)
    ]
    if zero_shot is not None:
        first = {"epoch": "0", "stage": "zero_shot", "train_seconds": "0.0", "train_loss": ""}
        history.insert(0, {**first, "map_at_r": zero_shot})
    return RunRecord(combination, seed, Path("."), {"metrics": {}}, history, ExperimentConfig(), "")


RUNS = [
    _run("a", 0, [(10.0, 2.0, "0.5"), (20.0, 1.0, "0.7")]),
    _run("a", 1, [(14.0, 3.0, "0.3"), (30.0, 2.0, "")]),  # seed 1 skipped validation at epoch 2
    _run("b", 0, [(5.0, 1.5, "0.6"), (9.0, 1.2, "0.65")]),
]


def test_curves_average_seeds_per_epoch_and_span_their_range() -> None:
    a, b = aggregate_curves(RUNS, "map_at_r")
    assert (a.combination, a.seeds, b.combination) == ("a", 2, "b")
    assert a.epoch.tolist() == [1, 2]
    assert a.mean == pytest.approx([0.4, 0.7]) and a.low == pytest.approx([0.3, 0.7])
    assert a.high == pytest.approx([0.5, 0.7])
    assert a.seconds == pytest.approx([12.0, 20.0])  # epoch 2: only seed 0 has a value
    loss = aggregate_curves(RUNS, "train_loss")[0]
    assert loss.seconds == pytest.approx([12.0, 25.0]) and loss.mean == pytest.approx([2.5, 1.5])


def test_the_figure_has_a_row_per_column_and_a_line_per_combination_on_both_axes() -> None:
    figure = plot_curves(RUNS, ["map_at_r"])
    axes = figure.axes
    assert len(axes) == 4  # train_loss and map_at_r, by epoch and by time
    by_time = axes[3]
    lines = {tuple(line.get_xdata()): tuple(line.get_ydata()) for line in by_time.get_lines()}
    assert lines[(12.0, 20.0)] == pytest.approx((0.4, 0.7))
    assert lines[(5.0, 9.0)] == pytest.approx((0.6, 0.65))
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["a", "b"]
    # every loss is positive, so the loss axes are logarithmic; the metric axes are not
    assert [a.get_yscale() for a in axes] == ["log", "log", "linear", "linear"]
    # a combination keeps its colour from panel to panel
    colours = [{line.get_color() for line in a.get_lines()} for a in axes]
    assert colours[0] == colours[3] == {"C0", "C1"}


def test_the_zero_shot_row_is_epoch_0_of_the_metric_curves_starred_and_named_in_the_legend() -> None:
    runs = [_run("a", 0, [(10.0, 2.0, "0.5"), (20.0, 1.0, "0.7")], zero_shot="0.2")]
    [curve] = aggregate_curves(runs, "map_at_r")
    assert curve.epoch.tolist() == [0, 1, 2] and curve.mean == pytest.approx([0.2, 0.5, 0.7])
    assert curve.seconds == pytest.approx([0.0, 10.0, 20.0])  # no training before it
    [loss] = aggregate_curves(runs, "train_loss")
    assert loss.epoch.tolist() == [1, 2]  # the zero-shot row has no training loss
    figure = plot_curves(runs, ["map_at_r"])
    by_epoch = figure.axes[2]
    stars = [line for line in by_epoch.get_lines() if line.get_marker() == "*"]
    assert [(tuple(s.get_xdata()), tuple(s.get_ydata())) for s in stars] == [((0,), (0.2,))]
    assert "0: zero-shot" in by_epoch.get_xlabel()
    assert [t.get_text() for t in figure.legends[0].get_texts()][-1].startswith("epoch 0 (star): zero-shot")
    # without a zero-shot row, no star and no legend entry
    plain = plot_curves(RUNS, ["map_at_r"])
    assert not any(line.get_marker() == "*" for axes in plain.axes for line in axes.get_lines())


def test_one_epoch_is_drawn_as_a_point_with_its_seed_range() -> None:
    runs = [_run("a", 0, [(1.0, 1.0, "0.2")]), _run("a", 1, [(1.0, 1.0, "0.6")])]
    figure = plot_curves(runs, ["map_at_r"])
    [bar] = figure.axes[2].containers
    assert np.asarray(bar.lines[0].get_ydata()) == pytest.approx([0.4])


def test_train_writes_the_curves_of_its_run(tiny_comparison, tmp_path, monkeypatch) -> None:
    # Training itself is tested elsewhere: here `fit` hands back a finished run of the tiny comparison.
    [finished] = list((tiny_comparison / "runs").glob("*ContrastiveLoss*/seed-0"))
    run_dir = shutil.copytree(finished, tmp_path / "run")
    summary = json.loads((run_dir / "summary.json").read_text())
    monkeypatch.setattr("embedlab.training.fit.fit", lambda *args, **kwargs: RunResult(run_dir, summary))
    config = tmp_path / "tiny.yaml"
    config.write_text((run_dir / "config.yaml").read_text())
    result = CliRunner().invoke(app, ["train", str(config), "--out", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "curves.png" in result.output
    with Image.open(run_dir / "curves.png") as image:
        image.verify()
        assert image.size == (1100, round(100 * (0.6 + 0.2 + 2.7 * 6 + 0.55)))  # loss and 5 metrics
