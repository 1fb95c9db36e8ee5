"""Metrics from shards, streamed, against the engine on the same embeddings in memory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedlab.cli import app
from embedlab.embeddings.shards import Shard, ShardSpec, write_items, write_manifest, write_shard, write_spec
from embedlab.evaluation import evaluate_retrieval
from embedlab.evaluation.shards import evaluate_shards

METRICS = ["precision_at_1", "precision_at_5", "recall_at_10", "map_at_3", "r_precision", "map_at_r"]


def _write(
    folder: Path, embeddings: np.ndarray, labels: np.ndarray, names: list[str], shard_size: int
) -> Path:
    spec = ShardSpec(
        model={},
        preprocessing={},
        source="synthetic",
        n_items=len(labels),
        shard_size=shard_size,
        embedding_dim=embeddings.shape[1],
        label_names=names,
    )
    write_spec(folder, spec)
    write_items(folder, ({"path": str(i), "label": names[c], "extra": {}} for i, c in enumerate(labels)))
    for shard in range(spec.n_shards):
        ids = np.arange(spec.ids_of(shard).start, spec.ids_of(shard).stop)
        write_shard(folder, shard, Shard(ids, labels[ids], embeddings[ids]))
    write_manifest(folder, spec)
    return folder


def _data(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(classes, size=n)
    centres = rng.normal(size=(classes, 8))
    rows = centres[labels] + rng.normal(scale=1.5, size=(n, 8))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32), labels


def test_a_folder_searched_in_itself_scores_as_the_engine(tmp_path: Path) -> None:
    rows, labels = _data(230, 7, seed=0)
    folder = _write(tmp_path / "q", rows, labels, [f"id{c}" for c in range(7)], shard_size=50)
    streamed = evaluate_shards(folder, metrics=METRICS, query_block_rows=64)
    expected = evaluate_retrieval(rows, labels, metrics=METRICS)
    assert streamed.n_queries == expected.n_queries == 230
    for name in METRICS:
        assert streamed.metrics[name] == pytest.approx(expected.metrics[name], abs=1e-12), name


def test_queries_against_a_separate_gallery_match_labels_by_name(tmp_path: Path) -> None:
    rows, labels = _data(300, 6, seed=1)
    queries, gallery = np.arange(0, 300, 3), np.setdiff1d(np.arange(300), np.arange(0, 300, 3))
    # The gallery folder lists its names in another order, and lacks one identity of the queries.
    gallery = gallery[labels[gallery] != 5]
    gallery_names = ["id4", "id3", "id2", "id1", "id0"]
    gallery_codes = np.array([gallery_names.index(f"id{c}") for c in labels[gallery]])
    query_folder = _write(tmp_path / "q", rows[queries], labels[queries], [f"id{c}" for c in range(6)], 40)
    gallery_folder = _write(tmp_path / "g", rows[gallery], gallery_codes, gallery_names, 64)
    streamed = evaluate_shards(query_folder, gallery_folder, metrics=METRICS)
    expected = evaluate_retrieval(
        rows[queries], labels[queries], rows[gallery], labels[gallery], metrics=METRICS
    )
    assert streamed.n_queries_without_positives == expected.n_queries_without_positives > 0
    for name in METRICS:
        assert streamed.metrics[name] == pytest.approx(expected.metrics[name], abs=1e-12), name


def test_ties_are_ranked_by_gallery_index_as_the_engine_ranks_them(tmp_path: Path) -> None:
    """Rows drawn from the 16 vectors of entries +-0.5 in 4-d (unit, exact in float32), so almost every
    similarity ties; labels drawn independently of the rows, so which of the tied items make a query's
    top d changes the metrics. The gallery spans several shards and query blocks."""
    rng = np.random.default_rng(4)
    rows = rng.choice([-0.5, 0.5], size=(300, 4)).astype(np.float32)
    labels = rng.integers(6, size=300)
    names = [f"id{c}" for c in range(6)]
    metrics = [*METRICS, "precision_at_20", "map_at_50"]
    folder = _write(tmp_path / "q", rows, labels, names, shard_size=45)
    streamed = evaluate_shards(folder, metrics=metrics, query_block_rows=64)
    expected = evaluate_retrieval(rows, labels, metrics=metrics)
    for name in metrics:
        assert streamed.metrics[name] == pytest.approx(expected.metrics[name], abs=1e-12), name
    queries, gallery = np.arange(0, 300, 4), np.setdiff1d(np.arange(300), np.arange(0, 300, 4))
    query_folder = _write(tmp_path / "q2", rows[queries], labels[queries], names, 30)
    gallery_folder = _write(tmp_path / "g2", rows[gallery], labels[gallery], names, 40)
    streamed = evaluate_shards(query_folder, gallery_folder, metrics=metrics, query_block_rows=32)
    expected = evaluate_retrieval(
        rows[queries], labels[queries], rows[gallery], labels[gallery], metrics=metrics
    )
    for name in metrics:
        assert streamed.metrics[name] == pytest.approx(expected.metrics[name], abs=1e-12), name


def test_metrics_of_the_whole_ranking_are_refused(tmp_path: Path) -> None:
    rows, labels = _data(20, 2, seed=2)
    folder = _write(tmp_path / "q", rows, labels, ["a", "b"], 10)
    with pytest.raises(ValueError, match="map, mrr need the rank of every positive"):
        evaluate_shards(folder, metrics=["precision_at_1", "map", "mrr"])


def test_the_evaluate_command_reads_shards(tmp_path: Path) -> None:
    rows, labels = _data(60, 3, seed=3)
    folder = _write(tmp_path / "q", rows, labels, ["a", "b", "c"], 25)
    result = CliRunner().invoke(app, ["evaluate", "--query-shards", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    expected = evaluate_retrieval(rows, labels, metrics=list(payload)[:-2])
    assert payload["n_queries"] == 60 and payload["map_at_r"] == pytest.approx(expected.metrics["map_at_r"])
    refused = CliRunner().invoke(app, ["evaluate", "--query-shards", str(folder), "--rerank", "5,2,0.3"])
    assert refused.exit_code == 2 and "no retrieval steps" in refused.output
