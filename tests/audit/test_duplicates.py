"""Duplicate groups: exact ones by hash, near ones by connected components, and the kind of each."""

from pathlib import Path

import numpy as np
import pytest
import torch

from embedlab.audit.duplicates import (
    ACROSS_IDENTITIES,
    LEAK_QUERY_GALLERY,
    LEAK_TRAIN_VALIDATION,
    WITHIN_IDENTITY,
    derive_near_threshold,
    exact_groups,
    group_kinds,
    held_out_items,
    near_groups,
    near_pairs,
)
from embedlab.audit.items import VALIDATION, AuditItems
from embedlab.data.images import ImageFiles


def make_items(labels: list[int], split: list[str], is_query=None, is_gallery=None) -> AuditItems:
    """Items of the given labels and splits; validation items are queries and gallery items unless told."""
    count = len(labels)
    paths = [Path(f"/data/{n}.png") for n in range(count)]
    in_validation = np.array([s == VALIDATION for s in split])
    files = ImageFiles(labels=torch.tensor(labels), paths=paths)
    return AuditItems(
        paths=paths,
        boxes=[None] * count,
        labels=np.array(labels),
        label_names=[f"id_{n}" for n in range(max(labels) + 1)],
        split=np.array(split),
        is_query=in_validation if is_query is None else np.array(is_query),
        is_gallery=in_validation if is_gallery is None else np.array(is_gallery),
        train=files.subset(torch.from_numpy(np.flatnonzero(~in_validation))),
        validation=files.subset(torch.from_numpy(np.flatnonzero(in_validation))),
        validation_searches_train=False,
    )


TRAIN, VAL = "train", VALIDATION


def test_each_kind_of_group_is_named_by_what_its_members_are() -> None:
    items = make_items([0, 0, 1, 2, 2, 3, 3, 4, 4], [TRAIN, TRAIN, TRAIN, TRAIN, VAL, VAL, VAL, VAL, VAL])
    assert group_kinds(np.array([0, 1]), items) == (WITHIN_IDENTITY,)
    assert group_kinds(np.array([1, 2]), items) == (ACROSS_IDENTITIES,)
    assert group_kinds(np.array([3, 4]), items) == (LEAK_TRAIN_VALIDATION,)
    assert group_kinds(np.array([5, 6]), items) == (LEAK_QUERY_GALLERY,)
    # Two validation items of two identities conflict, but a query does not find its own copy.
    assert group_kinds(np.array([6, 7]), items) == (ACROSS_IDENTITIES,)
    assert group_kinds(np.array([2, 7, 8]), items) == (
        ACROSS_IDENTITIES,
        LEAK_TRAIN_VALIDATION,
        LEAK_QUERY_GALLERY,
    )


def test_a_query_and_an_item_that_is_not_in_the_gallery_do_not_leak() -> None:
    items = make_items([0, 0], [VAL, VAL], is_query=[True, True], is_gallery=[False, False])
    assert group_kinds(np.array([0, 1]), items) == (WITHIN_IDENTITY,)


def test_exact_groups_gather_every_item_of_a_hash_and_skip_unique_ones() -> None:
    items = make_items([0, 1, 0, 2, 1], [TRAIN] * 3 + [VAL] * 2)
    groups = exact_groups(["b", "a", "b", "c", "a"], items)
    assert [g.members.tolist() for g in groups] == [[0, 2], [1, 4]]
    assert groups[0].kinds == (WITHIN_IDENTITY,) and groups[0].evidence == ["b", "b"]
    assert groups[1].kinds == (LEAK_TRAIN_VALIDATION,)


def test_near_pairs_keep_each_pair_once_at_or_above_the_threshold_and_leave_exact_copies_out() -> None:
    ids = np.array([[1, 2], [0, 3], [3, 0], [2, -1]])
    sims = np.array([[0.95, 0.5], [0.95, 0.9], [0.97, 0.5], [0.97, -np.inf]], dtype=np.float32)
    first, second, similarity = near_pairs(ids, sims, 0.9, ["a", "b", "c", "c"])
    assert list(zip(first.tolist(), second.tolist(), strict=True)) == [(0, 1), (1, 3)]
    assert similarity.tolist() == pytest.approx([0.95, 0.9])


def test_near_groups_join_chains_and_report_each_members_best_similarity() -> None:
    items = make_items([0, 0, 0, 1, 1], [TRAIN] * 5)
    ids = np.array([[1, 4], [2, 0], [1, 3], [4, 2], [3, 0]])
    sims = np.array([[0.96, 0.1], [0.98, 0.96], [0.98, 0.3], [0.99, 0.3], [0.99, 0.1]], dtype=np.float32)
    groups = near_groups(ids, sims, 0.95, ["a", "b", "c", "d", "e"], items)
    assert [g.members.tolist() for g in groups] == [[0, 1, 2], [3, 4]]
    assert groups[0].evidence == ["0.9600", "0.9800", "0.9800"]
    assert near_groups(ids, sims, 0.995, ["a", "b", "c", "d", "e"], items) == []


def test_held_out_items_are_the_validation_members_of_leaks_and_conflicts() -> None:
    items = make_items([0, 0, 1, 1, 2, 2], [TRAIN, VAL, VAL, VAL, TRAIN, TRAIN])
    groups = exact_groups(["a", "a", "b", "b", "c", "c"], items)
    assert [g.kinds for g in groups] == [(LEAK_TRAIN_VALIDATION,), (LEAK_QUERY_GALLERY,), (WITHIN_IDENTITY,)]
    assert held_out_items(groups, items).tolist() == [1, 2, 3]


def test_the_threshold_is_what_95_percent_of_copies_reach() -> None:
    copies = np.linspace(0.80, 0.99, 20)
    threshold = derive_near_threshold(copies)
    assert (copies >= threshold).mean() == pytest.approx(0.95)
    with pytest.raises(ValueError, match="at least one copy"):
        derive_near_threshold(np.empty(0))
