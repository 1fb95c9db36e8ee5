"""The retrieval snapshot: neighbours and positive counts against a plain loop, the file, and `fit`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedlab.config import load_config
from embedlab.data.images import InMemoryImages
from embedlab.data.splits import prepare_data
from embedlab.training.fit import fit
from embedlab.training.snapshot import read_snapshot, take_snapshot, write_snapshot


def _images(labels: np.ndarray, **annotations: np.ndarray) -> InMemoryImages:
    return InMemoryImages(
        labels=torch.as_tensor(labels),
        images=torch.zeros((len(labels), 1, 2, 2), dtype=torch.uint8),
        **{name: torch.as_tensor(values) for name, values in annotations.items()},
    )


def _loop_neighbours(queries, gallery, k, hidden):
    """Plain loop: cosine similarity, best first, ties by the lower gallery index; `hidden(q, g)` skips."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    out = []
    for i in range(len(q)):
        seen = [(-float(q[i] @ g[j]), j) for j in range(len(g)) if not hidden(i, j)]
        out.append([j for _, j in sorted(seen)[:k]])
    return out


def test_neighbours_against_a_separate_gallery_match_a_plain_loop() -> None:
    rng = np.random.default_rng(0)
    queries, gallery = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(12, 5)).astype(np.float32)
    q_labels, g_labels = rng.integers(0, 3, 7), rng.integers(0, 3, 12)
    snap = take_snapshot(queries, gallery, _images(q_labels), _images(g_labels), epoch=4, k=4)
    expected = _loop_neighbours(queries, gallery, 4, lambda i, j: False)
    assert snap.neighbour_index.tolist() == expected
    assert snap.neighbour_labels.tolist() == [[int(g_labels[j]) for j in row] for row in expected]
    assert snap.n_positives.tolist() == [int((g_labels == label).sum()) for label in q_labels]
    assert not snap.gallery_is_query and snap.epoch == 4
    assert snap.query_embeddings.dtype == np.float16 and snap.query_index.tolist() == list(range(7))


def test_a_set_searched_in_itself_hides_each_query_and_its_group() -> None:
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(10, 4)).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 0, 1])
    groups = np.array([0, 0, 1, 2, 3, 3, 4, 5, 6, 7])
    snap = take_snapshot(embeddings, None, _images(labels, groups=groups), None, epoch=0, k=3)
    expected = _loop_neighbours(embeddings, embeddings, 3, lambda i, j: groups[i] == groups[j])
    assert snap.neighbour_index.tolist() == expected
    loop_positives = [
        sum(labels[j] == labels[i] and groups[j] != groups[i] for j in range(10)) for i in range(10)
    ]
    assert snap.n_positives.tolist() == loop_positives
    assert snap.gallery_is_query


def test_query_and_gallery_roles_pick_who_searches_and_who_is_found() -> None:
    rng = np.random.default_rng(2)
    embeddings = rng.normal(size=(8, 3)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    is_query = np.array([1, 1, 1, 0, 0, 0, 0, 1], dtype=bool)
    is_gallery = np.array([0, 1, 1, 1, 1, 1, 1, 0], dtype=bool)
    snap = take_snapshot(
        embeddings, None, _images(labels, is_query=is_query, is_gallery=is_gallery), None, epoch=0, k=10
    )
    rows, cols = np.flatnonzero(is_query), np.flatnonzero(is_gallery)
    loop = _loop_neighbours(embeddings[rows], embeddings[cols], 10, lambda i, j: rows[i] == cols[j])
    assert snap.query_index.tolist() == rows.tolist()
    # Results are rows of the whole validation set; fewer than k items remain, so the tail is -1
    # (queries 1 and 2 are gallery items too and do not see themselves).
    assert [[int(i) for i in r if i >= 0] for r in snap.neighbour_index] == [
        [cols[j] for j in r] for r in loop
    ]
    assert (snap.neighbour_index >= 0).sum(axis=1).tolist() == [6, 5, 5, 6]
    assert np.isneginf(snap.neighbour_similarity[snap.neighbour_index < 0]).all()
    assert not snap.correct[snap.neighbour_index < 0].any()
    assert snap.n_positives.tolist() == [sum(labels[c] == labels[r] and c != r for c in cols) for r in rows]


def test_the_file_round_trips_and_leaves_no_temporary_behind(tmp_path) -> None:
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(6, 4)).astype(np.float32)
    snap = take_snapshot(embeddings, None, _images(np.array([0, 0, 1, 1, 2, 2])), None, epoch=2, k=2)
    write_snapshot(tmp_path / "retrieval.npz", snap)
    back = read_snapshot(tmp_path / "retrieval.npz")
    assert back.epoch == 2 and back.gallery_is_query is True
    np.testing.assert_array_equal(back.neighbour_index, snap.neighbour_index)
    np.testing.assert_array_equal(back.query_embeddings, snap.query_embeddings)
    assert [p.name for p in tmp_path.iterdir()] == ["retrieval.npz"]


def test_fit_writes_the_snapshot_of_its_last_epoch(tmp_path, quick_digits) -> None:
    cfg, _ = load_config(None, [*quick_digits, "train.epochs=2", "train.max_steps_per_epoch=2"])
    fit(cfg, tmp_path / "run", progress=False)
    snap = read_snapshot(tmp_path / "run" / "retrieval.npz")
    query = prepare_data(cfg.data).query
    assert snap.epoch == 2  # epochs trained, as metrics.csv counts
    assert snap.query_embeddings.shape == (len(query), cfg.model.embedding_dim)
    np.testing.assert_array_equal(snap.query_labels, query.labels.numpy())
    np.testing.assert_array_equal(snap.neighbour_labels, query.labels.numpy()[snap.neighbour_index])
    assert (snap.neighbour_index != np.arange(len(query))[:, None]).all()  # a query never finds itself
    assert snap.neighbour_similarity[:, 0] == pytest.approx(snap.neighbour_similarity.max(axis=1))
