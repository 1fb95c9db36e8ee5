"""A tiny finished comparison shared by the reporting tests: 2 losses x 2 seeds, 2 epochs of 2 steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedlab.config import load_config
from embedlab.training.compare import compare

TINY = [
    "data.dataset=digits",
    "data.validation.split=images",
    "train.epochs=2",
    "train.batch_size=32",
    "train.max_steps_per_epoch=2",
    "model.embedding_dim=16",
]
COMBINATIONS = ("loss=ContrastiveLoss", "loss=MultiSimilarityLoss")


@pytest.fixture(scope="session")
def tiny_comparison(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, raw = load_config(None, TINY)
    raw["grid"] = {"loss": [{"name": "ContrastiveLoss"}, {"name": "MultiSimilarityLoss"}]}
    out = tmp_path_factory.mktemp("comparison")
    compare(raw, out, seeds=2, progress=False)
    return out
