"""progress.py: the per-epoch lines printed off a terminal and the rich bar's epochs, counted from 1."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from embedlab.config import load_config
from embedlab.training.fit import fit
from embedlab.training.progress import EpochBar, epoch_line, format_duration

LINE = re.compile(r"^epoch (\d+)/3  loss \d+\.\d{4}  map_at_r (\d\.\d{4}|-)  elapsed \d+:\d\d  eta \d+:\d\d$")


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0:00"), (59.6, "1:00"), (61, "1:01"), (3600, "1:00:00"), (3725, "1:02:05")]
)
def test_durations_read_as_minutes_and_seconds(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_an_epoch_line_names_the_epoch_loss_metric_elapsed_and_eta() -> None:
    line = epoch_line(1, 3, 1.23456, "map_at_r", 0.623449, elapsed=12.2, eta=24.4)
    assert line == "epoch 1/3  loss 1.2346  map_at_r 0.6234  elapsed 0:12  eta 0:24"
    assert "map_at_r -" in epoch_line(2, 3, 1.0, "map_at_r", None, elapsed=1, eta=1)


def test_the_rich_bar_counts_epochs_from_1() -> None:
    bar = EpochBar()
    bar._trainer = SimpleNamespace(max_epochs=3)  # type: ignore[assignment]
    assert bar._get_train_description(0).strip() == "Epoch 1/3"
    assert bar._get_train_description(2).strip() == "Epoch 3/3"


def test_fit_off_a_terminal_prints_one_line_per_epoch(
    tmp_path: Path, quick_digits: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = [
        *quick_digits,
        "train.epochs=3",
        "train.eval_every_n_epochs=2",
        "train.max_steps_per_epoch=2",
    ]
    cfg, _ = load_config(None, overrides)
    result = fit(cfg, tmp_path / "run")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [(m[1], m[2] == "-") for m in matches if m] == [("1", True), ("2", False), ("3", False)]
    assert f"map_at_r {result.metrics['map_at_r']:.4f}" in lines[-1]
    assert lines[-1].endswith("eta 0:00")


def test_fit_without_progress_prints_no_epoch_lines(
    tmp_path: Path, quick_digits: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, _ = load_config(None, quick_digits)
    fit(cfg, tmp_path / "run", progress=False)
    assert "epoch 1/1" not in capsys.readouterr().out
