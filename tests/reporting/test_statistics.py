"""Seed wins and paired tests against answers worked out by hand, and against scipy where it is exact."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from embedlab.reporting.statistics import (
    compare_pairs,
    holm,
    mid_ranks,
    seed_wins,
    sign_test,
    smallest_p_value,
    wilcoxon_signed_rank,
)


def test_seed_wins_count_signs_and_ties() -> None:
    counts = seed_wins([0.2, -0.1, 0.0, 0.3])
    assert (counts.wins, counts.losses, counts.ties) == (2, 1, 1)


@pytest.mark.parametrize(
    ("differences", "expected"),
    [
        ([1, 1, 1, 1, 1], 2 / 32),  # 5 wins: P(X = 0) + P(X = 5)
        ([0.01, 0.02, 0.03], 2 / 8),  # 3 seeds, all won: the smallest p 3 seeds allow
        ([1] * 8 + [-1] * 2, 2 * (1 + 10 + 45) / 1024),  # 8 wins, 2 losses
        ([1, 1, 0, -1], 1.0),  # the tie is dropped: 2 wins, 1 loss
        ([0, 0], 1.0),  # nothing left
    ],
)
def test_sign_test_known_answers(differences, expected) -> None:
    assert sign_test(differences) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("differences", "expected"),
    [
        ([1, 2, 3, 4, 5], 2 / 32),  # T+ = 15, the maximum
        ([1, -2, 3, 4, 5], 6 / 32),  # T+ = 13: sums 13, 14, 15 and 0, 1, 2 are as extreme, 3 ways each
        ([2, 2, 2], 2 / 8),  # tied ranks 2, 2, 2: T+ = 6 of {0, 2, 4, 6} weighted 1, 3, 3, 1
        ([1, 1, -1], 1.0),  # T+ = 4 is as close to the mean 3 as any sum can be
        ([0, 1, 2, 3], 2 / 8),  # the zero is dropped
        ([0.0], 1.0),
    ],
)
def test_wilcoxon_known_answers(differences, expected) -> None:
    assert wilcoxon_signed_rank(differences) == pytest.approx(expected)


def test_wilcoxon_matches_scipy_exact_without_ties() -> None:
    rng = np.random.default_rng(0)
    for n in (4, 6, 9):
        d = rng.normal(0.2, 1.0, n)
        assert wilcoxon_signed_rank(d) == pytest.approx(stats.wilcoxon(d, method="exact").pvalue)


def test_wilcoxon_with_ties_matches_enumerating_every_sign_pattern() -> None:
    d = np.array([0.5, -0.5, 1.0, 1.0, 2.0, -3.0])
    ranks = mid_ranks(np.abs(d))
    assert ranks.tolist() == [1.5, 1.5, 3.5, 3.5, 5.0, 6.0]
    observed = ranks[d > 0].sum()
    centre = ranks.sum() / 2
    patterns = list(itertools.product([0, 1], repeat=d.size))
    extreme = sum(abs(np.dot(p, ranks) - centre) >= abs(observed - centre) - 1e-12 for p in patterns)
    assert wilcoxon_signed_rank(d) == pytest.approx(extreme / len(patterns))


def test_smallest_p_value_halves_with_each_seed() -> None:
    assert [smallest_p_value(n) for n in (1, 2, 3, 5)] == [1.0, 0.5, 0.25, 0.0625]


def test_holm_adjusts_in_steps_and_keeps_the_input_order() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([]) == []


def test_compare_pairs_pairs_by_seed_and_says_when_seeds_cannot_decide() -> None:
    values = {
        "a": {0: 0.70, 1: 0.72, 2: 0.71},
        "b": {0: 0.69, 1: 0.71, 2: 0.70, 3: 0.99},  # seed 3 has no partner and is left out
        "c": {0: 0.50, 1: 0.52, 2: 0.51},
    }
    pairs = compare_pairs(values, "map_at_r")
    assert [(p.a, p.b) for p in pairs] == [("a", "b"), ("a", "c"), ("b", "c")]
    ab = pairs[0]
    assert ab.seeds == [0, 1, 2] and (ab.wins.wins, ab.wins.losses) == (3, 0)
    assert ab.mean_difference == pytest.approx(0.01)
    assert ab.wilcoxon_p == pytest.approx(0.25) and ab.sign_p == pytest.approx(0.25)
    assert ab.wilcoxon_p_holm == pytest.approx(0.75)
    assert ab.verdict() == "undecided: 3 seeds cannot reach p < 0.05"


def test_a_verdict_names_the_leader_only_below_alpha_after_holm() -> None:
    seeds = range(8)
    values = {"a": {s: 0.5 for s in seeds}, "b": {s: 0.6 + 0.01 * s for s in seeds}}
    [pair] = compare_pairs(values, "map_at_r")
    assert pair.wilcoxon_p == pytest.approx(2 / 256)
    assert pair.verdict().startswith("b ahead (p = 0.00781")
    noisy = {"a": {s: 0.5 for s in seeds}, "b": {s: 0.5 + (0.01 if s % 2 else -0.011) for s in seeds}}
    assert compare_pairs(noisy, "map_at_r")[0].verdict().startswith("no significant difference")
