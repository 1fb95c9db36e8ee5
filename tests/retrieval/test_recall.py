"""recall@k of faiss indexes against exact search: the count, and measured values."""

from __future__ import annotations

import numpy as np
import pytest

from embedlab.retrieval.arrays import sample_rows
from embedlab.retrieval.exclusions import make_exclusions
from embedlab.retrieval.faiss_index import (
    IndexOptions,
    ShardedIndexBuilder,
    empty_index,
    parts,
    set_search_parameters,
)
from embedlab.retrieval.recall import approximate_recall, measure_recall, recall_at_k

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


@pytest.mark.parametrize("method", ["hnsw", "ivf"])
def test_approximate_recall_of_hnsw_and_ivf(method: str) -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    recall = approximate_recall(x, x, 10, method=method, sample_size=100, exclude_self=True)
    assert recall.method == method and recall.k == 10 and recall.n_queries == 100
    # Small, well-spread data: both indexes find nearly everything exact search does.
    assert 0.8 <= recall.recall <= 1.0


def test_ivfpq_trained_on_a_sample_finds_most_exact_neighbours() -> None:
    """IVF-PQ of 16-byte codes (pq_m 16 of 64-d rows, 6 bits each) trained on a third of the gallery,
    split over two shards: its recall@10 against exact search, measured as the index build reports it
    (0.81 on these 600 identities of about 10 rows each)."""
    rows = _clustered(6000, 64, 600)
    options = IndexOptions(ivf_nlist=32, pq_m=16, pq_nbits=6, train_size=2000).resolved(
        "ivfpq", len(rows), 64
    )
    template = empty_index(
        "ivfpq", 64, options, rows[sample_rows(len(rows), options.train_size or 0, seed=0)]
    )
    builder = ShardedIndexBuilder(template, len(rows), 2)
    builder.add(rows)
    index = builder.finish()
    set_search_parameters(index, nprobe=8, ef_search=64)
    assert all(part.nprobe == 8 for part in parts(index))
    queries = sample_rows(len(rows), 200, seed=1)
    blocks = iter(np.array_split(rows, 5))
    own_rows = make_exclusions(len(queries), len(rows), exclude_index=queries)
    estimate = measure_recall(
        rows[queries],
        blocks,
        10,
        own_rows,
        index=index,
        index_options=IndexOptions(ivf_nprobe=8, hnsw_ef_search=64),
    )
    assert estimate.n_queries == 200 and estimate.k == 10
    assert estimate.recall > 0.7, estimate


def test_recall_counts_the_exact_neighbours_found() -> None:
    exact = np.array([[1, 2, 3, 4], [5, 6, -1, -1]])
    found = np.array([[4, 9, 1, 8], [6, 5, 7, -1]])
    assert recall_at_k(found, exact) == pytest.approx((2 + 2) / (4 + 2))
