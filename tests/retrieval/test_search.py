"""Exact and approximate kNN search against a plain-loop ranking with the METRICS.md tie rule."""

from __future__ import annotations

import numpy as np
import pytest

from embedlab.retrieval.search import iter_search, search


def loop_search(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    query_groups: np.ndarray | None = None,
    gallery_groups: np.ndarray | None = None,
    normalise: bool = True,
) -> list[list[int]]:
    """Top-k gallery indices per query: similarity descending, index ascending, exclusions dropped."""
    if normalise:
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    out = []
    for i, query in enumerate(queries.astype(np.float64)):
        similarity = gallery.astype(np.float64) @ query
        items = [
            j
            for j in range(len(gallery))
            if not (exclude_self and i == j)
            and not (query_groups is not None and query_groups[i] == gallery_groups[j])
        ]
        out.append(sorted(items, key=lambda j: (-similarity[j], j))[:k])
    return out


def tie_heavy(n: int, seed: int) -> np.ndarray:
    """Unit vectors with entries +-0.5 in 4-d: every similarity is an exact multiple of 0.5."""
    return np.random.default_rng(seed).choice([-0.5, 0.5], size=(n, 4)).astype(np.float32)


def assert_neighbours(indices: np.ndarray, expected: list[list[int]], k: int) -> None:
    for row, items in zip(indices, expected, strict=True):
        assert row[: len(items)].tolist() == items
        assert (row[len(items) :] == -1).all()
        assert row.shape == (k,)


@pytest.mark.parametrize("k", [1, 4, 37, 80])
@pytest.mark.parametrize("max_memory_bytes", [1 << 30, 70 * 16 * 9])
def test_exact_search_in_itself_breaks_ties_by_index(k: int, max_memory_bytes: int) -> None:
    x = tie_heavy(70, seed=k)
    sims, idx = search(x, x, k, exclude_self=True, max_memory_bytes=max_memory_bytes)
    assert sims.dtype == np.float32 and idx.dtype == np.int64
    assert_neighbours(idx, loop_search(x, x, k, exclude_self=True), k)
    assert (np.diff(sims[:, : min(k, 69)], axis=1) <= 0).all()
    assert (sims[idx == -1] == -np.inf).all()


def test_exact_search_with_groups_and_a_separate_gallery() -> None:
    rng = np.random.default_rng(0)
    q, g = tie_heavy(30, seed=1), tie_heavy(50, seed=2)
    qg, gg = rng.integers(0, 5, 30), rng.integers(0, 5, 50)
    _, idx = search(q, g, 12, query_groups=qg, gallery_groups=gg, num_threads=2)
    assert_neighbours(idx, loop_search(q, g, 12, query_groups=qg, gallery_groups=gg), 12)
    # A query never sees a gallery item of its own group.
    assert not any(qg[i] == gg[j] for i, row in enumerate(idx) for j in row if j >= 0)


def test_inner_product_skips_normalisation() -> None:
    rng = np.random.default_rng(3)
    q = rng.standard_normal((10, 8)).astype(np.float32)
    g = rng.standard_normal((40, 8)).astype(np.float32) * rng.uniform(0.5, 3.0, (40, 1)).astype(np.float32)
    sims, idx = search(q, g, 5, metric="inner_product")
    assert_neighbours(idx, loop_search(q, g, 5, normalise=False), 5)
    np.testing.assert_allclose(sims, np.take_along_axis(q @ g.T, idx, axis=1), rtol=1e-6)


def test_streaming_blocks_cover_every_query_once() -> None:
    x = tie_heavy(50, seed=4)
    blocks = list(iter_search(x, x, 3, exclude_self=True, max_memory_bytes=50 * 16 * 7))
    assert len(blocks) > 1
    assert [b.start for b in blocks] == [0, *[b.stop for b in blocks[:-1]]] and blocks[-1].stop == 50
    _, idx = search(x, x, 3, exclude_self=True)
    np.testing.assert_array_equal(np.concatenate([b.indices for b in blocks]), idx)


def test_search_rejects_bad_embeddings() -> None:
    x = tie_heavy(5, seed=5)
    with pytest.raises(ValueError, match="NaN or infinite"):
        search(np.where(np.eye(5, 4) > 0, np.nan, x), x, 2)
    with pytest.raises(ValueError, match="dimension 4 but the gallery has dimension 3"):
        search(x, x[:, :3], 2)
    with pytest.raises(ValueError, match="gallery is empty"):
        search(x, x[:0], 2)
    with pytest.raises(ValueError, match="overflow"):
        search(x * 1e20, x * 1e20, 2, metric="inner_product")


@pytest.mark.parametrize("method", ["hnsw", "ivf"])
def test_approximate_search_respects_exclusions(method: str) -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    groups = rng.integers(0, 60, 300)
    sims, idx = search(x, x, 10, method=method, exclude_self=True, query_groups=groups, gallery_groups=groups)
    assert not (idx == np.arange(300)[:, None]).any()
    assert not any(groups[i] == groups[j] for i, row in enumerate(idx) for j in row if j >= 0)
    assert (np.diff(sims, axis=1) <= 0).all()
