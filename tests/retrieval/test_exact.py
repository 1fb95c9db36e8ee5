"""Exact search streamed over blocks of gallery rows, against a full search and the tie rule."""

from __future__ import annotations

import numpy as np
import pytest

from embedlab.retrieval import exact
from embedlab.retrieval.exact import exact_neighbours
from embedlab.retrieval.exclusions import make_exclusions


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Unit rows around `clusters` random centres: identities, as real embeddings form them."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(clusters, dim)))
    return _unit(
        centres[rng.integers(clusters, size=n)] + rng.normal(scale=0.3 / np.sqrt(dim), size=(n, dim))
    )


def test_exact_neighbours_streamed_in_small_chunks_match_a_full_search(monkeypatch) -> None:
    monkeypatch.setattr(exact, "EXACT_CHUNK_BYTES", 4 * 10 * 37)  # 37 gallery rows per step
    rows = _clustered(500, 8, 10)
    queries = np.arange(0, 500, 50)
    own_rows = make_exclusions(len(queries), len(rows), exclude_index=queries)
    sims, ids = exact_neighbours(rows[queries], iter(np.array_split(rows, 3)), 5, own_rows)
    full = rows[queries] @ rows.T
    full[np.arange(len(queries)), queries] = -np.inf
    expected = np.argsort(-full, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(sims, np.take_along_axis(full, expected, axis=1), rtol=1e-6)
    assert not np.isin(queries, ids).any()


def test_fewer_gallery_rows_than_k_leave_empty_slots() -> None:
    rows = _clustered(3, 4, 2)
    sims, ids = exact_neighbours(rows, iter([rows]), 5, make_exclusions(3, 3, exclude_self=True))
    assert (ids[:, 2:] == -1).all() and np.isinf(sims[:, 2:]).all()
    assert (ids[:, :2] >= 0).all()


@pytest.mark.parametrize("chunk_rows", [7, 64, 400])
def test_streamed_ties_are_broken_by_id_as_a_search_in_memory_breaks_them(
    monkeypatch, chunk_rows: int
) -> None:
    """Rows of entries +-0.5 in 4-d: 16 distinct unit vectors, so nearly every similarity ties."""
    rows = np.random.default_rng(7).choice([-0.5, 0.5], size=(300, 4)).astype(np.float32)
    queries = np.arange(0, 300, 7)
    monkeypatch.setattr(exact, "EXACT_CHUNK_BYTES", 4 * len(queries) * chunk_rows)
    groups = np.arange(300) % 5
    hidden = make_exclusions(
        len(queries),
        len(rows),
        exclude_index=queries,
        query_groups=groups[queries] + 1,
        gallery_groups=groups,
    )
    _, ids = exact_neighbours(rows[queries], iter(np.array_split(rows, 4)), 40, hidden)
    full = rows[queries] @ rows.T
    full[np.arange(len(queries)), queries] = -np.inf
    full[(groups[queries] + 1)[:, None] == groups[None, :]] = -np.inf
    # Plain loop: similarity descending, then id ascending.
    expected = [
        sorted(np.flatnonzero(row > -np.inf), key=lambda j, row=row: (-row[j], j))[:40] for row in full
    ]
    assert ids.tolist() == expected
