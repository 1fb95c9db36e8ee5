"""Two training processes (DDP on the gloo backend) started by `embedlab train --devices 2`, against one.

The model has no BatchNorm (a two-block ViT with LayerNorm, a linear neck): BatchNorm normalises each
process's slice of the batch by that slice's statistics, the one thing that legitimately differs from a
single process. Without it, two processes must train and score exactly as one does, up to the order of
floating-point sums: the tolerance is 1e-4 on the loss and on every metric.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from embedlab.config import load_config
from embedlab.data.splits import prepare_data
from embedlab.models.inference import embed
from embedlab.training.fit import fit
from embedlab.training.run_dir import load_run
from embedlab.training.snapshot import read_snapshot

EMBEDLAB = shutil.which("embedlab", path=str(Path(sys.executable).parent)) or "embedlab"

SETTINGS = [
    "data.dataset=digits",
    "data.validation.split=images",
    "data.m_per_class=4",
    "model.backbone=vit_tiny_patch16_224",
    "model.backbone_args={img_size: 8, patch_size: 2, depth: 2, embed_dim: 64, num_heads: 2}",
    "model.neck=linear",
    "model.embedding_dim=32",
    "train.epochs=2",
    "train.batch_size=32",
    "train.max_steps_per_epoch=20",
    "train.threads=1",
    "optimizer.lr=0.003",
    "loss={name: MultiSimilarityLoss}",
    "miner={name: MultiSimilarityMiner, epsilon: 0.1}",
    # the zero-shot row (epoch 0) is embedded in slices and gathered like every epoch's validation
    "train.zero_shot=true",
]
TOLERANCE = 1e-4


def _history(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as stream:
        return list(csv.DictReader(stream))


def test_two_processes_train_and_validate_as_one(tmp_path: Path) -> None:
    cfg, raw = load_config(None, SETTINGS)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    two = tmp_path / "two"
    trained = subprocess.run(
        [EMBEDLAB, "train", str(config), "--out", str(two), "--devices", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=600,
    )
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.count("; run folder: ") == 1  # one process reports
    one = fit(cfg, tmp_path / "one", progress=False)

    assert json.loads((two / "summary.json").read_text())["processes"] == 2
    rows_two, rows_one = _history(two), _history(one.run_dir)
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one] == ["0", "20", "40"]
    assert [r["stage"] for r in rows_two] == ["zero_shot", "train", "train"]
    for row_two, row_one in zip(rows_two, rows_one, strict=True):
        assert row_two["n_queries"] == row_one["n_queries"]
        training_row = row_two["stage"] == "train"
        if not training_row:
            assert row_two["train_loss"] == row_one["train_loss"] == ""
        for name in [*(["train_loss"] if training_row else []), *cfg.train.metrics]:
            assert float(row_two[name]) == pytest.approx(float(row_one[name]), abs=TOLERANCE), name

    # The validation embeddings the two processes gathered are the final model's embeddings of every
    # query, each once and in order.
    query = prepare_data(cfg.data).query
    snapshot = read_snapshot(two / "retrieval.npz")
    assert snapshot.query_index.tolist() == list(range(len(query)))
    expected = embed(load_run(two, "last").embedder, query)
    np.testing.assert_allclose(snapshot.query_embeddings.astype(np.float32), expected, atol=2e-3)
