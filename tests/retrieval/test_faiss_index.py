"""faiss indexes from one spec: options resolved by gallery size, IVF-PQ trained on a sample, indexes
split over shards and searched as one."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from embedlab.retrieval.faiss_index import (
    IndexOptions,
    ShardedIndexBuilder,
    add_rows,
    empty_index,
    parts,
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
    spec = IndexOptions().resolved("ivfpq", 1_000_000, 128)
    assert (spec.ivf_nlist, spec.pq_m, spec.train_size) == (4000, 16, 160_000)
    assert IndexOptions().resolved("ivfpq", 5000, 100).pq_m == 10  # the largest divisor of 100 up to 100 / 8
    assert IndexOptions(ivf_nlist=8, train_size=50).resolved("ivf", 5000, 16).train_size == 50
    assert IndexOptions().resolved("ivf", 300, 16).train_size == 300  # never more rows than the gallery
    assert IndexOptions().resolved("hnsw", 10, 16) == IndexOptions()
    with pytest.raises(ValueError, match="pq_m must divide the embedding size 128, got 12"):
        IndexOptions(pq_m=12).resolved("ivfpq", 5000, 128)


def test_too_few_training_rows_is_a_clear_error() -> None:
    options = IndexOptions(ivf_nlist=4).resolved("ivfpq", 100, 8)
    with pytest.raises(ValueError, match="needs at least 256 training rows, got 100"):
        empty_index("ivfpq", 8, options, _clustered(100, 8, 4))


@pytest.mark.parametrize("n_shards", [1, 3])
def test_a_sharded_exact_index_answers_as_one_flat_index(n_shards: int) -> None:
    rows = _clustered(1000, 16, 20)
    builder = ShardedIndexBuilder(empty_index("exact", 16, IndexOptions(), None), len(rows), n_shards)
    for start in range(0, len(rows), 333):  # blocks that straddle the shard boundaries
        builder.add(rows[start : start + 333])
    index = builder.finish()
    assert [p.ntotal for p in parts(index)] == np.diff(shard_bounds(1000, n_shards)).tolist()
    reference = faiss.IndexFlatIP(16)
    reference.add(rows)
    queries = rows[:50]
    np.testing.assert_array_equal(index.search(queries, 7)[1], reference.search(queries, 7)[1])


def test_the_builder_refuses_more_or_fewer_rows_than_planned() -> None:
    builder = ShardedIndexBuilder(empty_index("exact", 4, IndexOptions(), None), 10, 2)
    builder.add(_clustered(8, 4, 2))
    with pytest.raises(ValueError, match="8 rows were added, the index was planned for 10"):
        builder.finish()
    with pytest.raises(ValueError, match="more rows than the 10"):
        builder.add(_clustered(3, 4, 2))


def test_rows_added_later_go_to_the_last_shard_and_keep_their_ids() -> None:
    rows = _clustered(100, 8, 5)
    builder = ShardedIndexBuilder(empty_index("exact", 8, IndexOptions(), None), 90, 3)
    builder.add(rows[:90])
    index = builder.finish()
    add_rows(index, rows[90:])
    assert index.ntotal == 100 and [p.ntotal for p in parts(index)] == [30, 30, 40]
    _, ids = index.search(rows[90:], 1)
    assert ids[:, 0].tolist() == list(range(90, 100))
