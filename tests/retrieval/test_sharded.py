"""Large-gallery indexes: IVF-PQ trained on a sample, indexes split over shards and searched as one,
exact search streamed over blocks, and recall against it."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from embedlab.retrieval import sharded
from embedlab.retrieval.sharded import (
    IndexSpec,
    ShardedIndexBuilder,
    add_rows,
    empty_index,
    exact_neighbours,
    measure_index_recall,
    parts,
    recall_at_k,
    sample_rows,
    set_search_parameters,
    shard_bounds,
)

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Unit rows around `clusters` random centres: identities, as real embeddings form them."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(clusters, dim)))
    return _unit(
        centres[rng.integers(clusters, size=n)] + rng.normal(scale=0.3 / np.sqrt(dim), size=(n, dim))
    )


def test_unset_parameters_follow_the_gallery_size() -> None:
    spec = IndexSpec("ivfpq").resolved(1_000_000, 128)
    assert (spec.nlist, spec.pq_m, spec.train_size) == (4000, 16, 160_000)
    assert IndexSpec("ivfpq").resolved(5000, 100).pq_m == 10  # the largest divisor of 100 up to 100 / 8
    assert IndexSpec("ivf", nlist=8, train_size=50).resolved(5000, 16).train_size == 50
    assert IndexSpec("ivf").resolved(300, 16).train_size == 300  # never more rows than the gallery
    assert IndexSpec("hnsw").resolved(10, 16) == IndexSpec("hnsw")
    with pytest.raises(ValueError, match="pq_m must divide the embedding size 128, got 12"):
        IndexSpec("ivfpq", pq_m=12).resolved(5000, 128)


def test_too_few_training_rows_is_a_clear_error() -> None:
    spec = IndexSpec("ivfpq", nlist=4).resolved(100, 8)
    with pytest.raises(ValueError, match="needs at least 256 training rows, got 100"):
        empty_index(spec, 8, _clustered(100, 8, 4))


@pytest.mark.parametrize("n_shards", [1, 3])
def test_a_sharded_flat_index_answers_as_one_flat_index(n_shards: int) -> None:
    rows = _clustered(1000, 16, 20)
    builder = ShardedIndexBuilder(empty_index(IndexSpec("flat"), 16, None), len(rows), n_shards)
    for start in range(0, len(rows), 333):  # blocks that straddle the shard boundaries
        builder.add(rows[start : start + 333])
    index = builder.finish()
    assert [p.ntotal for p in parts(index)] == np.diff(shard_bounds(1000, n_shards)).tolist()
    reference = faiss.IndexFlatIP(16)
    reference.add(rows)
    queries = rows[:50]
    np.testing.assert_array_equal(index.search(queries, 7)[1], reference.search(queries, 7)[1])


def test_the_builder_refuses_more_or_fewer_rows_than_planned() -> None:
    builder = ShardedIndexBuilder(empty_index(IndexSpec("flat"), 4, None), 10, 2)
    builder.add(_clustered(8, 4, 2))
    with pytest.raises(ValueError, match="8 rows were added, the index was planned for 10"):
        builder.finish()
    with pytest.raises(ValueError, match="more rows than the 10"):
        builder.add(_clustered(3, 4, 2))


def test_rows_added_later_go_to_the_last_shard_and_keep_their_ids() -> None:
    rows = _clustered(100, 8, 5)
    builder = ShardedIndexBuilder(empty_index(IndexSpec("flat"), 8, None), 90, 3)
    builder.add(rows[:90])
    index = builder.finish()
    add_rows(index, rows[90:])
    assert index.ntotal == 100 and [p.ntotal for p in parts(index)] == [30, 30, 40]
    _, ids = index.search(rows[90:], 1)
    assert ids[:, 0].tolist() == list(range(90, 100))


def test_ivfpq_trained_on_a_sample_finds_most_exact_neighbours() -> None:
    """IVF-PQ of 16-byte codes (pq_m 16 of 64-d rows, 6 bits each) trained on a third of the gallery,
    split over two shards: its recall@10 against exact search, measured as the index build reports it
    (0.81 on these 600 identities of about 10 rows each)."""
    rows = _clustered(6000, 64, 600)
    spec = IndexSpec("ivfpq", nlist=32, pq_m=16, pq_nbits=6, train_size=2000).resolved(len(rows), 64)
    template = empty_index(spec, 64, rows[sample_rows(len(rows), spec.train_size or 0, seed=0)])
    builder = ShardedIndexBuilder(template, len(rows), 2)
    builder.add(rows)
    index = builder.finish()
    set_search_parameters(index, nprobe=8, ef_search=64)
    assert all(part.nprobe == 8 for part in parts(index))
    queries = sample_rows(len(rows), 200, seed=1)
    blocks = iter(np.array_split(rows, 5))
    estimate = measure_index_recall(index, rows[queries], queries, blocks, k=10)
    assert estimate.n_queries == 200 and estimate.k == 10
    assert estimate.recall > 0.7, estimate


def test_exact_neighbours_streamed_in_small_chunks_match_a_full_search(monkeypatch) -> None:
    monkeypatch.setattr(sharded, "EXACT_CHUNK_BYTES", 4 * 10 * 37)  # 37 gallery rows per step
    rows = _clustered(500, 8, 10)
    queries = np.arange(0, 500, 50)
    sims, ids = exact_neighbours(rows[queries], iter(np.array_split(rows, 3)), 5, exclude=queries)
    full = rows[queries] @ rows.T
    full[np.arange(len(queries)), queries] = -np.inf
    expected = np.argsort(-full, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(sims, np.take_along_axis(full, expected, axis=1), rtol=1e-6)
    assert not np.isin(queries, ids).any()


def test_fewer_gallery_rows_than_k_leave_empty_slots() -> None:
    rows = _clustered(3, 4, 2)
    sims, ids = exact_neighbours(rows, iter([rows]), 5, exclude=np.array([0, 1, 2]))
    assert (ids[:, 2:] == -1).all() and np.isinf(sims[:, 2:]).all()
    assert (ids[:, :2] >= 0).all()


def test_recall_counts_the_exact_neighbours_found() -> None:
    exact = np.array([[1, 2, 3, 4], [5, 6, -1, -1]])
    found = np.array([[4, 9, 1, 8], [6, 5, 7, -1]])
    assert recall_at_k(found, exact) == pytest.approx((2 + 2) / (4 + 2))
