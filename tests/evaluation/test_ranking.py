"""The compiled ranking kernel against hand cases and the METRICS.md rank formula computed plainly."""

from __future__ import annotations

import numpy as np
import pytest

from embedlab.evaluation.ranking import _key, _sample_stride, _select, positive_ranks

# ------------------------------------------------------------------------------------ the reference


def rank_of(row: np.ndarray, p: int) -> int:
    """METRICS.md: 1 + #{j: s_j > s_p} + #{j < p: s_j == s_p}."""
    return 1 + int(np.count_nonzero(row > row[p])) + int(np.count_nonzero(row[:p] == row[p]))


def reference(
    similarities: np.ndarray,
    query_codes: np.ndarray,
    gallery_codes: np.ndarray,
    depth: int,
    first_beyond_depth: bool,
) -> np.ndarray:
    """The ranks positive_ranks promises, row by row with the formula: the finite positives at least as
    similar as the depth-th best finite item, else (optionally) the best positive's rank."""
    lists = []
    for row, code in zip(similarities, query_codes, strict=True):
        finite = np.sort(row[np.isfinite(row)])[::-1]
        threshold = finite[depth - 1] if depth <= finite.size else -np.inf
        positives = [p for p in np.flatnonzero(gallery_codes == code) if np.isfinite(row[p])]
        ranks = sorted(rank_of(row, p) for p in positives if row[p] >= threshold)
        if not ranks and first_beyond_depth and positives:
            ranks = [min(rank_of(row, p) for p in positives)]
        lists.append(ranks)
    padded = np.full((len(lists), max(1, *(len(r) for r in lists))), np.inf)
    for i, ranks in enumerate(lists):
        padded[i, : len(ranks)] = ranks
    return padded


def ranks(
    similarities: object,
    query_codes: object,
    gallery_codes: object,
    depth: int,
    *,
    first_beyond_depth: bool = False,
    num_threads: int = 1,
) -> np.ndarray:
    """positive_ranks on plain lists, with the class index built from the gallery codes."""
    sims = np.asarray(similarities, dtype=np.float32)
    sims = sims[None, :] if sims.ndim == 1 else sims
    gallery = np.asarray(gallery_codes, dtype=np.int64)
    queries = np.atleast_1d(np.asarray(query_codes, dtype=np.int64))
    sizes = np.bincount(gallery, minlength=int(queries.max()) + 1)
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    members = np.argsort(gallery, kind="stable").astype(np.int64)
    return positive_ranks(
        sims,
        queries,
        gallery,
        offsets,
        members,
        depth,
        first_beyond_depth=first_beyond_depth,
        num_threads=num_threads,
    )


# ------------------------------------------------------------------------------------- hand cases


def test_positives_tied_with_the_depth_th_item_are_ranked_past_the_depth() -> None:
    # The 2nd best is 0.5 at index 0; indices 2 and 3 tie with it and follow it by index.
    got = ranks([0.5, 0.9, 0.5, 0.5, 0.1], 1, [0, 0, 1, 1, 1], depth=2)
    assert got.tolist() == [[3.0, 4.0]]
    # One below the threshold: the positive at 0.1 is not listed.
    assert ranks([0.5, 0.9, 0.5, 0.1], 1, [0, 0, 0, 1], depth=2).tolist() == [[np.inf]]


def test_negative_zero_ties_with_zero() -> None:
    # -0.0 and 0.0 compare equal, so the index alone orders them.
    got = ranks([0.0, -0.0, 0.0, -0.0], 1, [0, 1, 0, 1], depth=4)
    assert got.tolist() == [[2.0, 4.0]]
    # The 2nd best is -0.0 (index 1): the 0.0 at index 2 ties with it.
    assert ranks([1.0, -0.0, 0.0], 1, [0, 0, 1], depth=2).tolist() == [[3.0]]


def test_excluded_items_are_never_ranked_nor_counted() -> None:
    row = [-np.inf, 0.3, -np.inf, 0.1, 0.2]
    # Index 0 is an excluded positive; the -inf at index 2 ranks nothing down.
    assert ranks(row, 1, [1, 0, 0, 1, 0], depth=5).tolist() == [[3.0]]
    # Fewer finite items (3) than the depth: every finite positive is ranked.
    assert ranks(row, 1, [1, 1, 0, 1, 0], depth=4).tolist() == [[1.0, 3.0]]
    # A row whose positives are all excluded lists nothing, even with first_beyond_depth.
    assert ranks(row, 1, [1, 0, 1, 0, 0], depth=1, first_beyond_depth=True).tolist() == [[np.inf]]
    # A row of excluded items only.
    assert ranks([-np.inf] * 3, 0, [0, 0, 1], depth=1, first_beyond_depth=True).tolist() == [[np.inf]]


def test_first_positive_beyond_the_depth_is_counted_over_the_whole_row() -> None:
    row = [0.9, 0.8, 0.7, 0.7]
    assert ranks(row, 1, [0, 0, 0, 1], depth=1).tolist() == [[np.inf]]
    assert ranks(row, 1, [0, 0, 0, 1], depth=1, first_beyond_depth=True).tolist() == [[4.0]]
    # Of two positives tied at the best value, the lower index is the first.
    assert ranks(row, 1, [0, 0, 1, 1], depth=1, first_beyond_depth=True).tolist() == [[3.0]]
    # A positive within the depth: only the ranks within it, not the first-positive count.
    assert ranks(row, 1, [0, 1, 0, 1], depth=2, first_beyond_depth=True).tolist() == [[2.0]]


def test_rows_without_a_label_list_nothing_and_lists_are_padded() -> None:
    got = ranks([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]], [-1, 0], [0, 0, 1], depth=3)
    assert got.tolist() == [[np.inf, np.inf], [1.0, 2.0]]


def test_keys_order_like_the_similarities_descending() -> None:
    values = np.array(
        [np.inf, 1.0, 1e-45, 0.0, -0.0, -1e-45, -0.5, -np.finfo(np.float32).max, -np.inf], dtype=np.float32
    )
    keys = np.array([_key(bits) for bits in values.view(np.uint32)])
    # Strictly increasing, except that -0.0 and 0.0 share a key.
    assert keys[3] == keys[4]
    assert np.all(np.diff(np.delete(keys, 4)) > 0)


@pytest.mark.parametrize("draw", ["spread", "ties", "constant"])
def test_select_finds_the_kth_smallest(draw: str) -> None:
    rng = np.random.default_rng(7)
    for size in (1, 2, 3, 17, 500):
        values = {
            "spread": rng.standard_normal(size),
            "ties": rng.integers(0, 4, size) / 2,
            "constant": np.full(size, 0.25),
        }[draw].astype(np.float32)
        for k in {0, size // 3, size - 1}:
            work = values.copy()
            assert _select(work, np.empty_like(work), size, k) == np.sort(values)[k]


def test_the_sample_stride_grows_as_the_depth_shrinks() -> None:
    assert _sample_stride(100, 100) == 1
    strides = [_sample_stride(50_000, depth) for depth in (1, 100, 5_000, 40_000)]
    assert strides == sorted(strides, reverse=True)
    assert strides[0] > 1


# ---------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("num_threads", [1, 2])
def test_random_tie_heavy_rows_match_the_reference(num_threads: int) -> None:
    rng = np.random.default_rng(0)
    levels = np.array([-1.0, -0.5, -0.0, 0.0, 0.25, 0.5, 1.0], dtype=np.float32)
    for trial in range(150):
        n, rows = int(rng.integers(1, 70)), int(rng.integers(1, 6))
        sims = rng.choice(levels, size=(rows, n)) if trial % 2 else rng.standard_normal((rows, n))
        sims = sims.astype(np.float32)
        sims[rng.random((rows, n)) < 0.2] = -np.inf
        gallery, queries = rng.integers(0, 3, n), rng.integers(-1, 3, rows)
        depth, first = int(rng.integers(1, n + 2)), bool(trial % 3)
        got = ranks(sims, queries, gallery, depth, first_beyond_depth=first, num_threads=num_threads)
        np.testing.assert_array_equal(got, reference(sims, queries, gallery, depth, first))


def test_long_rows_ranked_through_a_sampled_bound_match_the_reference() -> None:
    rng = np.random.default_rng(1)
    n = 9000
    sims = rng.standard_normal((4, n)).astype(np.float32)
    sims[1] = np.round(sims[1], 1)  # many exact ties, at the threshold too
    sims[2, rng.random(n) < 0.5] = -np.inf
    # Row 3: the sampled items are the best ones, so the sample promises a bound that too few items
    # reach and the row must be collected again in full.
    stride = _sample_stride(n, 3000)
    sims[3, ::stride] = 5.0 + np.arange(sims[3, ::stride].size, dtype=np.float32)
    gallery = rng.integers(0, 4, n)
    queries = np.array([0, 1, 2, 3])
    for depth in (1, 40, 3000, n - 1, n):
        for first in (False, True):
            got = ranks(sims, queries, gallery, depth, first_beyond_depth=first, num_threads=2)
            np.testing.assert_array_equal(got, reference(sims, queries, gallery, depth, first))
