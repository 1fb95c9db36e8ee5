"""Top-k selection and its keys follow the METRICS.md rule: similarity descending, index ascending."""

from __future__ import annotations

import numpy as np

from embedlab.retrieval.topk import merge_top_k, ordered_keys, top_k


def test_top_k_keeps_the_lowest_indices_of_a_tie_at_the_cut() -> None:
    similarities = np.array([[0.5, 0.9, 0.5, 0.5, -np.inf, 0.5, 0.1]], dtype=np.float32)
    sims, idx = top_k(similarities, 3)
    assert idx.tolist() == [[1, 0, 2]]
    sims, idx = top_k(similarities, 9)
    assert idx.tolist() == [[1, 0, 2, 3, 5, 6, -1, -1, -1]]
    assert sims[0, 6:].tolist() == [-np.inf] * 3


def test_ordered_keys_sort_like_the_ranking_rule() -> None:
    values = np.array([0.0, -0.0, 1.0, -np.inf, -2.5, 1.0, 3e-39], dtype=np.float32)
    order = np.argsort(ordered_keys(values, np.arange(values.size)))
    # 1.0 (index 2) before 1.0 (index 5); the two zeros tie, so index 0 precedes index 1.
    assert order.tolist() == [2, 5, 6, 0, 1, 4, 3]


def test_merging_two_candidate_lists_ranks_ties_by_id_and_empty_slots_last() -> None:
    first = (np.array([[0.5, 0.25, -np.inf]], dtype=np.float32), np.array([[7, 2, -1]]))
    second = (np.array([[0.5, 0.5, 0.25]], dtype=np.float32), np.array([[9, 3, 0]]))
    sims, ids = merge_top_k(first, second, 5)
    assert ids.tolist() == [[3, 7, 9, 0, 2]]
    assert sims.tolist() == [[0.5, 0.5, 0.5, 0.25, 0.25]]
    _, ids = merge_top_k(first, (second[0][:, :0], second[1][:, :0]), 3)
    assert ids.tolist() == [[7, 2, -1]]
