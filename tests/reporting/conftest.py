"""A tiny finished comparison shared by the reporting tests: 2 losses x 2 seeds, 2 epochs of 2 steps,
made by `embedlab compare` as a user would, which ends by writing the report."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from embedlab.cli import app
from embedlab.config import load_config

TINY = [
    "data.dataset=digits",
    "data.validation.split=images",
    "train.epochs=2",
    "train.batch_size=32",
    "train.max_steps_per_epoch=2",
    "model.embedding_dim=16",
]
COMBINATIONS = ("loss=ContrastiveLoss", "loss=MultiSimilarityLoss")


def printed(output: str) -> str:
    """CLI output without whitespace: rich wraps long paths at the console's width."""
    return "".join(output.split())


@pytest.fixture(scope="session")
def tiny_comparison(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, raw = load_config(None, TINY)
    raw["grid"] = {"loss": [{"name": "ContrastiveLoss"}, {"name": "MultiSimilarityLoss"}]}
    folder = tmp_path_factory.mktemp("tiny")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = folder / "comparison"
    result = CliRunner().invoke(app, ["compare", str(config), "--out", str(out), "--seeds", "2"])
    assert result.exit_code == 0, result.output
    assert f"report:{out / 'report.html'}" in printed(result.output)
    return out
