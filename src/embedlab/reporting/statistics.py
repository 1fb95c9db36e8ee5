"""Paired comparisons over seeds: seed wins, the sign test, the Wilcoxon signed-rank test, Holm's step-down.

Two combinations trained with the same seeds are compared seed by seed: seed s gives the difference
d_s = a_s - b_s of a metric. Pairing by seed removes what the seed changes for both alike (the
initialisation, the batch order). Both tests ask whether the differences are centred on zero:

- sign test: under H0 each non-zero d_s is positive with probability 1/2, so the number of positive
  differences is Binomial(n, 1/2); two-sided exact p-value. It uses only the signs.
- Wilcoxon signed-rank test (Wilcoxon 1945): ranks |d_s| (ties get their mean rank) and sums the ranks
  of the positive differences, T+. Under H0 every sign pattern is equally likely given the |d_s|, so
  the exact null distribution of T+ is that of a sum of the ranks each taken with probability 1/2,
  computed here by dynamic programming for any n and with tied ranks. Two-sided: the probability of a
  T+ at least as far from its mean n(n + 1)/4 as the one observed.

Zero differences carry no sign and are dropped (Wilcoxon's own convention). With n non-zero
differences no sign pattern is more extreme than "all the same sign", so neither test can give a
p-value below 2 / 2^n: 0.5 with 2 seeds, 0.25 with 3, 0.0625 with 5. A handful of seeds can show that
one combination won every seed, never that it is better at the 5% level.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class SeedWins:
    """How many seeds a won (a > b), lost and tied."""

    wins: int
    losses: int
    ties: int


@dataclass(frozen=True)
class PairedComparison:
    """Combination a against b on one metric, over the seeds both have.

    mean_difference: mean of a - b over the seeds. sign_p / wilcoxon_p: two-sided exact p-values.
    wilcoxon_p_holm: wilcoxon_p adjusted by Holm's method over every pair of the same comparison.
    smallest_p: the smallest p-value the tests could give with this many non-zero differences.
    """

    a: str
    b: str
    metric: str
    seeds: list[int]
    mean_difference: float
    wins: SeedWins
    sign_p: float
    wilcoxon_p: float
    wilcoxon_p_holm: float
    smallest_p: float

    def verdict(self, alpha: float = 0.05) -> str:
        """One line a reader can quote: who is ahead, or why the seeds cannot say."""
        if self.wilcoxon_p_holm < alpha:
            leader = self.a if self.mean_difference > 0 else self.b
            return f"{leader} ahead (p = {self.wilcoxon_p_holm:.3g} after Holm)"
        if self.smallest_p >= alpha:
            return f"undecided: {len(self.seeds)} seeds cannot reach p < {alpha:g}"
        return f"no significant difference (p = {self.wilcoxon_p_holm:.3g} after Holm)"


def seed_wins(differences: Sequence[float]) -> SeedWins:
    """Count the positive, negative and zero differences a - b."""
    d = np.asarray(differences, dtype=np.float64)
    return SeedWins(wins=int((d > 0).sum()), losses=int((d < 0).sum()), ties=int((d == 0).sum()))


def smallest_p_value(n_nonzero: int) -> float:
    """The smallest two-sided p-value the sign or signed-rank test can give for n non-zero differences."""
    return min(1.0, 2.0 / 2**n_nonzero)


def sign_test(differences: Sequence[float]) -> float:
    """Two-sided exact sign test of median zero; zero differences are dropped (p = 1 if none is left).

    p = min(1, 2 * P(X <= min(wins, losses))) with X ~ Binomial(wins + losses, 1/2).
    """
    counts = seed_wins(differences)
    n = counts.wins + counts.losses
    tail = sum(math.comb(n, i) for i in range(min(counts.wins, counts.losses) + 1))
    return min(1.0, 2.0 * tail / 2**n)


def mid_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of `values` ascending, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    stops = np.r_[starts[1:], values.size]
    for start, stop in zip(starts, stops, strict=True):
        ranks[order[start:stop]] = (start + 1 + stop) / 2
    return ranks


def wilcoxon_signed_rank(differences: Sequence[float]) -> float:
    """Two-sided exact Wilcoxon signed-rank test of symmetry about zero (see the module docstring).

    Zero differences are dropped (p = 1 if none is left); tied |d| get mid-ranks and the null
    distribution is computed for those ranks, so the p-value stays exact with ties.
    """
    d = np.asarray(differences, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    # Mid-ranks are multiples of 1/2, so twice the ranks are integers and index the distribution.
    doubled = np.rint(2 * mid_ranks(np.abs(d))).astype(np.int64)
    total = int(doubled.sum())
    distribution = np.zeros(total + 1)
    distribution[0] = 1.0
    for rank in doubled:
        shifted = np.zeros_like(distribution)
        shifted[rank:] = distribution[: total + 1 - rank]
        distribution = 0.5 * (distribution + shifted)
    observed = int(doubled[d > 0].sum())
    sums = np.arange(total + 1)
    # |T - total/2| >= |T_obs - total/2|, written on doubled sums to stay in integers.
    extreme = np.abs(2 * sums - total) >= abs(2 * observed - total)
    return float(min(1.0, distribution[extreme].sum()))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's (1979) step-down adjustment of m p-values, returned in the input order.

    The i-th smallest becomes max over j <= i of min(1, (m - j + 1) * p_(j)); rejecting the adjusted
    p-values below alpha keeps the chance of any false claim among the m below alpha.
    """
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for position, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - position) * p_values[index]))
        adjusted[index] = running
    return adjusted


def compare_pairs(
    values: Mapping[str, Mapping[int, float]], metric: str, order: Sequence[str] | None = None
) -> list[PairedComparison]:
    """Every pair (a, b) of combinations, a before b in `order` (default: the mapping's order).

    values: combination -> seed -> the metric's value. Pairs are compared on the seeds both have;
    Holm's adjustment runs over all the pairs returned.
    """
    names = list(order) if order is not None else list(values)
    pairs: list[PairedComparison] = []
    for a, b in itertools.combinations(names, 2):
        seeds = sorted(set(values[a]) & set(values[b]))
        differences = [values[a][s] - values[b][s] for s in seeds]
        wins = seed_wins(differences)
        pairs.append(
            PairedComparison(
                a=a,
                b=b,
                metric=metric,
                seeds=seeds,
                mean_difference=float(np.mean(differences)) if seeds else math.nan,
                wins=wins,
                sign_p=sign_test(differences),
                wilcoxon_p=wilcoxon_signed_rank(differences),
                wilcoxon_p_holm=math.nan,
                smallest_p=smallest_p_value(wins.wins + wins.losses),
            )
        )
    adjusted = holm([p.wilcoxon_p for p in pairs])
    return [replace(p, wilcoxon_p_holm=q) for p, q in zip(pairs, adjusted, strict=True)]
