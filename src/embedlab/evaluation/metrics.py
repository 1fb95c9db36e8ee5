"""Per-query retrieval metrics as pure functions, exactly as defined in METRICS.md.

Every metric of METRICS.md is a function of two things per query: R, the number of positives in the
query's gallery after exclusions, and the 1-based ranks of those positives in the ranking. The functions
here take them as

- `positive_ranks`: (Nq, M) float64, each row the ranks of the query's positives in ascending order,
  padded with +inf; a row may stop early (the rest +inf) when only the top of the ranking was searched,
  as long as it holds every positive ranked within the depth the metric looks at (k, R or everything);
- `n_positives`: (Nq,) int64, R per query.

and return (Nq,) float64 values in [0, 1]. With rel(i) the relevance of the i-th ranked item and the j-th
positive at rank r_j, P@r_j = j / r_j, which turns every sum over ranks into a sum over positives.
A query with R = 0 scores 0 here; the engine decides whether it is averaged (METRICS.md, "Averaging").
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from embedlab.metric_names import MetricKind, MetricSpec


def positive_ranks_from_relevance(relevance: np.ndarray) -> np.ndarray:
    """Convert a relevance matrix into padded positive ranks.

    relevance: (Nq, k) bool, relevance[q, i] = rel(i + 1) of the ranked neighbour list of query q.
    Returns (Nq, M) float64 with M = the most positives in a row (at least 1), rows ascending, +inf padded.
    """
    relevance = np.asarray(relevance, dtype=bool)
    if relevance.ndim != 2:
        raise ValueError(f"relevance must be a 2-D (Nq, k) array, got shape {relevance.shape}.")
    counts = relevance.sum(axis=1)
    width = max(1, int(counts.max(initial=0)))
    ranks = np.full((relevance.shape[0], width), np.inf)
    rows, cols = np.nonzero(relevance)
    # np.nonzero walks row by row with columns ascending, so a hit's slot is its order within its row.
    row_starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    slots = np.arange(rows.size) - row_starts[rows]
    ranks[rows, slots] = cols + 1
    return ranks


def _positions(positive_ranks: np.ndarray) -> np.ndarray:
    """(1, M) float64: j for the j-th positive (1-based)."""
    return np.arange(1, positive_ranks.shape[1] + 1, dtype=np.float64)[None, :]


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros(numerator.shape), where=denominator > 0)


def precision_at_k(positive_ranks: np.ndarray, k: int) -> np.ndarray:
    """precision_at_k = (1/k) * sum_{i<=k} rel(i). Needs every positive ranked <= k."""
    return np.count_nonzero(positive_ranks <= k, axis=1) / float(k)


def recall_at_k(positive_ranks: np.ndarray, k: int) -> np.ndarray:
    """recall_at_k = 1 if some positive is ranked <= k else 0 (CMC@k, the metric-learning Recall@K)."""
    return (positive_ranks[:, 0] <= k).astype(np.float64)


def r_precision(positive_ranks: np.ndarray, n_positives: np.ndarray) -> np.ndarray:
    """r_precision = (1/R) * sum_{i<=R} rel(i) (Musgrave et al. 2020). Needs every positive ranked <= R."""
    hits = np.count_nonzero(positive_ranks <= n_positives[:, None], axis=1).astype(np.float64)
    return _safe_divide(hits, n_positives.astype(np.float64))


def map_at_r(positive_ranks: np.ndarray, n_positives: np.ndarray) -> np.ndarray:
    """map_at_r = (1/R) * sum_{i<=R} P@i * rel(i) (MAP@R, Musgrave et al. 2020). Needs ranks <= R."""
    terms = np.where(positive_ranks <= n_positives[:, None], _positions(positive_ranks) / positive_ranks, 0.0)
    return _safe_divide(terms.sum(axis=1), n_positives.astype(np.float64))


def map_at_k(positive_ranks: np.ndarray, n_positives: np.ndarray, k: int) -> np.ndarray:
    """map_at_k = (1/min(R, k)) * sum_{i<=k} P@i * rel(i). Needs every positive ranked <= k.

    k = 100 is Google Landmark Retrieval's mAP@100, k = 20 the Where's Whale-do score.
    """
    terms = np.where(positive_ranks <= k, _positions(positive_ranks) / positive_ranks, 0.0)
    return _safe_divide(terms.sum(axis=1), np.minimum(n_positives, k).astype(np.float64))


def average_precision(positive_ranks: np.ndarray, n_positives: np.ndarray) -> np.ndarray:
    """map (per query) = (1/R) * sum_{i<=|G(q)|} P@i * rel(i). Needs the ranks of all R positives."""
    found = np.count_nonzero(np.isfinite(positive_ranks), axis=1)
    if np.any(found < n_positives):
        raise ValueError("average_precision needs the rank of every positive; some rows are truncated.")
    terms = np.where(np.isfinite(positive_ranks), _positions(positive_ranks) / positive_ranks, 0.0)
    return _safe_divide(terms.sum(axis=1), n_positives.astype(np.float64))


def reciprocal_rank(positive_ranks: np.ndarray) -> np.ndarray:
    """mrr (per query) = 1 / rank of the first positive; 0 without positives. Needs the first rank."""
    return 1.0 / positive_ranks[:, 0]


_FORMULAS: dict[MetricKind, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "precision_at_k": lambda ranks, _r, k: precision_at_k(ranks, k),
    "recall_at_k": lambda ranks, _r, k: recall_at_k(ranks, k),
    "r_precision": lambda ranks, r, _k: r_precision(ranks, r),
    "map_at_r": lambda ranks, r, _k: map_at_r(ranks, r),
    "map_at_k": lambda ranks, r, k: map_at_k(ranks, r, k),
    "map": lambda ranks, r, _k: average_precision(ranks, r),
    "mrr": lambda ranks, _r, _k: reciprocal_rank(ranks),
}


def metric_values(spec: MetricSpec, positive_ranks: np.ndarray, n_positives: np.ndarray) -> np.ndarray:
    """Per-query values (Nq,) float64 of one metric from padded positive ranks (Nq, M) and R (Nq,)."""
    return _FORMULAS[spec.kind](positive_ranks, n_positives, spec.k or 0)
