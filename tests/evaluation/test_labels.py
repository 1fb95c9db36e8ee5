"""The gallery label index and each query's positive count R, against plain loops."""

from __future__ import annotations

import numpy as np

from embedlab.evaluation.labels import LabelIndex, positive_counts
from embedlab.retrieval.exclusions import make_exclusions


def test_label_codes_list_each_label_members_in_gallery_order() -> None:
    gallery_labels = np.array([7, 3, 7, 9, 3, 7])
    labels = LabelIndex.build(gallery_labels)
    for code, label in enumerate(labels.unique):
        members = labels.members[labels.offsets[code] : labels.offsets[code + 1]]
        assert members.tolist() == [j for j, x in enumerate(gallery_labels) if x == label]
        assert labels.counts[code] == members.size
    assert labels.codes_of(np.array([9, 4, 3, 100])).tolist() == [2, -1, 0, -1]


def test_positive_counts_leave_out_the_own_row_and_group_members_once() -> None:
    rng = np.random.default_rng(0)
    labels_of = rng.integers(0, 3, 30)
    groups = rng.integers(0, 5, 30)
    labels = LabelIndex.build(labels_of)
    exclusions = make_exclusions(30, 30, exclude_self=True, query_groups=groups, gallery_groups=groups)
    codes = labels.codes_of(labels_of)
    got = np.concatenate([positive_counts(codes, labels, exclusions, s, s + 10) for s in (0, 10, 20)])
    expected = [
        sum(1 for j in range(30) if j != i and groups[j] != groups[i] and labels_of[j] == labels_of[i])
        for i in range(30)
    ]
    assert got.tolist() == expected
