"""Likely label errors and merge candidates from hand-made neighbour lists."""

import numpy as np

from embedlab.audit.identities import label_errors, merge_candidates, vote_count


def test_the_vote_count_follows_the_median_identity_size_within_bounds() -> None:
    assert vote_count(np.array([2, 2, 2]), 20) == 3
    assert vote_count(np.array([6, 6, 7]), 20) == 6
    assert vote_count(np.array([50, 60]), 20) == 20
    assert vote_count(np.array([6]), 2) == 2


def test_an_item_whose_neighbours_are_another_identity_is_flagged_with_that_identity() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    # Item 6 is labelled 1 but sits among the items of identity 0.
    ids = np.array([[1, 2, 6], [0, 2, 6], [0, 1, 6], [4, 5, 0], [3, 5, 1], [3, 4, 2], [0, 1, 3]])
    sims = np.tile(np.array([0.9, 0.8, 0.7], dtype=np.float32), (7, 1))
    errors = label_errors(ids, sims, labels, k=3)
    assert errors.items.tolist() == [6]
    assert errors.suggested.tolist() == [0]
    assert (errors.other_votes.tolist(), errors.own_votes.tolist()) == ([2], [1])
    assert errors.scores.tolist() == [1 / 3] and errors.similarities.tolist() == [np.float32(0.9)]


def test_an_item_whose_nearest_neighbour_is_its_own_is_not_flagged() -> None:
    labels = np.array([0, 0, 1, 1, 1])
    ids = np.array([[1, 2, 3], [0, 2, 3], [1, 0, 3], [4, 2, 0], [3, 2, 1]])
    sims = np.tile(np.array([0.9, 0.8, 0.7], dtype=np.float32), (5, 1))
    # Item 2 (identity 1): two of its three neighbours and its nearest are of identity 0, so it is flagged;
    # with its own identity nearest (the same votes), it is not.
    assert label_errors(ids, sims, labels, k=3).items.tolist() == [2]
    ids[2] = [3, 1, 0]
    assert label_errors(ids, sims, labels, k=3).items.tolist() == []


def test_two_identities_closer_to_each_other_than_to_themselves_are_a_merge_candidate() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    # Identities 0 and 1 are copies of one another; identity 2 keeps to itself.
    ids = np.array([[2, 1, 4], [3, 0, 5], [0, 3, 4], [1, 2, 5], [5, 0, 1], [4, 1, 0]])
    sims = np.tile(np.array([0.99, 0.9, 0.2], dtype=np.float32), (6, 1))
    merges = merge_candidates(ids, sims, labels)
    assert list(zip(merges.first.tolist(), merges.second.tolist(), strict=True)) == [(0, 1)]
    assert merges.closer_items.tolist() == [4] and merges.total_items.tolist() == [4]
    assert merges.shares.tolist() == [1.0] and merges.similarities.tolist() == [np.float32(0.99)]


def test_one_sided_closeness_is_not_a_merge() -> None:
    labels = np.array([0, 1, 1, 1])
    # The lone item of identity 0 is nearest to identity 1, whose items are nearest to one another.
    ids = np.array([[1, 2, 3], [2, 3, 0], [1, 3, 0], [1, 2, 0]])
    sims = np.tile(np.array([0.9, 0.8, 0.1], dtype=np.float32), (4, 1))
    assert merge_candidates(ids, sims, labels).first.size == 0
