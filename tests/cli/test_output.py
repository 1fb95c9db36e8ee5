"""What the commands print where stdout is not a terminal (a log, a scheduler, CI) at 80 columns:
progress line by line as it happens, and tables with every value and name in full."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

EMBEDLAB = shutil.which("embedlab", path=str(Path(sys.executable).parent)) or "embedlab"
#: At 80 columns, and with Python's own buffering (PYTHONUNBUFFERED would hide a missing flush).
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "COLUMNS": "80"}
EPOCH = re.compile(r"^epoch (\d+)/2  loss \d+\.\d{4}  map_at_r \d\.\d{4}  elapsed \d+:\d\d  eta \d+:\d\d$")


@pytest.fixture
def digits_config(tmp_path: Path, quick_digits: list[str]) -> Path:
    from embedlab.config import load_config

    _, raw = load_config(None, [*quick_digits, "train.epochs=2"])
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def stream_lines(*args: str) -> list[tuple[str, bool]]:
    """Each line of stdout (piped) as it arrives, with whether the process was still running then."""
    process = subprocess.Popen(
        [EMBEDLAB, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV
    )
    assert process.stdout is not None
    lines = [(line.rstrip("\n"), process.poll() is None) for line in process.stdout]
    assert process.wait(timeout=600) == 0, lines
    return lines


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EMBEDLAB, *args], capture_output=True, text=True, env=ENV, timeout=600)


def test_train_prints_a_line_per_epoch_while_it_runs(tmp_path: Path, digits_config: Path) -> None:
    lines = stream_lines("train", str(digits_config), "--out", str(tmp_path / "run"))
    epochs = [(EPOCH.match(text), running) for text, running in lines if text.startswith("epoch ")]
    assert [m[1] for m, _ in epochs if m] == ["1", "2"], lines
    assert epochs[0][1], "epoch 1's line came only when the process had ended"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for name, value in summary["metrics"].items():
        assert f"| {name} | {value:.4f} |" in [text for text, _ in lines]


def test_train_prints_the_zero_shot_values_and_ends_with_the_below_zero_shot_warning(
    tmp_path: Path, digits_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from typer.testing import CliRunner

    from embedlab.cli import app
    from embedlab.training import callbacks

    score = callbacks.score_validation
    scored = []

    def perfect_zero_shot(*args, **kwargs):
        result = score(*args, **kwargs)
        scored.append(result)
        # the first scoring is the zero-shot one: made perfect, so that training ends below it
        return (
            dataclasses.replace(result, metrics=dict.fromkeys(result.metrics, 1.0))
            if len(scored) == 1
            else result
        )

    monkeypatch.setattr(callbacks, "score_validation", perfect_zero_shot)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["train", str(digits_config), "--out", str(out), "--set", "train.zero_shot=on"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    summary = json.loads((out / "summary.json").read_text())
    for name, value in summary["metrics"].items():
        assert f"| {name} | {value:.4f} | 1.0000 |" in lines  # the final value, then the zero-shot one
    [warning] = summary["warnings"]
    assert warning.startswith("map_at_r ended at")
    assert lines[-1] == f"warning: {warning}"  # last, in one line


def test_evaluate_tables_keep_every_value_at_80_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "q.npy", rng.normal(size=(30, 4)).astype(np.float32))
    np.save(tmp_path / "ql.npy", np.arange(30) % 3)
    files = ["--query-embeddings", str(tmp_path / "q.npy"), "--query-labels", str(tmp_path / "ql.npy")]
    expected = json.loads(run("evaluate", *files, "--json").stdout)
    printed = run("evaluate", *files)
    assert printed.returncode == 0, printed.stderr
    assert "…" not in printed.stdout
    for name in ("precision_at_1", "map_at_r", "map"):
        assert f"| {name} | {expected[name]:.4f} |" in printed.stdout.splitlines()

    options = ["--whiten", "3", "--qe", "1,0"]
    rows = json.loads(run("evaluate", *files, *options, "--json").stdout)
    table = run("evaluate", *files, *options)
    assert table.returncode == 0, table.stderr
    assert "…" not in table.stdout
    names = [key for key in rows[0] if key not in ("step", "step_seconds", "scoring_seconds")]
    names = [name for name in names if isinstance(rows[0][name], float)]
    for row in rows:
        line = next(text for text in table.stdout.splitlines() if f" {row['step']} |" in text)
        for name in names:
            assert f" {row[name]:.4f} " in line, (name, line)


def test_compare_announces_each_run_as_it_starts_and_names_combinations_in_full(
    tmp_path: Path, digits_config: Path
) -> None:
    grid = "loss.name=ContrastiveLoss,MultiSimilarityLoss"
    lines = stream_lines("compare", str(digits_config), "--out", str(tmp_path / "cmp"), "--grid", grid)
    texts = [text for text, _ in lines]
    starts = [i for i, text in enumerate(texts) if text.startswith("run ")]
    assert [texts[i] for i in starts] == [
        "run 1 of 2: loss.name=ContrastiveLoss seed 0",
        "run 2 of 2: loss.name=MultiSimilarityLoss seed 0",
    ]
    first_epochs = [i for i, text in enumerate(texts) if text.startswith("epoch 1/2")]
    assert starts[0] < first_epochs[0] < starts[1] < first_epochs[1]
    assert lines[starts[1]][1], "run 2 was announced only when the comparison had ended"
    board = [text for text in texts[starts[1] :] if text.startswith("| ")]
    assert any("| loss.name=ContrastiveLoss |" in text for text in board)
    assert any("| loss.name=MultiSimilarityLoss |" in text for text in board)
