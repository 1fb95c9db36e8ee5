"""Likely label errors and identities that may be one, from each item's nearest neighbours
(docs/audit.md, "Label errors" and "Merge candidates").

Neighbour lists: (N, K) item ids (-1 where fewer items remain) and similarities, ranked best first, an
item never its own neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def vote_count(identity_sizes: np.ndarray, largest: int) -> int:
    """Neighbours that vote on an item's identity: the median number of images per identity, between 3
    and `largest` (an identity of m images can give an item at most m - 1 neighbours of its own)."""
    median = int(np.median(identity_sizes)) if identity_sizes.size else 3
    return max(1, min(largest, max(3, median)))


@dataclass(frozen=True)
class LabelErrors:
    """Candidates, best first: items, the identity most of their neighbours carry instead, how many of
    the k voting neighbours carry it and their own, the score (other - own) / k, and the similarity to
    the nearest neighbour (which carries that identity)."""

    items: np.ndarray
    suggested: np.ndarray
    other_votes: np.ndarray
    own_votes: np.ndarray
    scores: np.ndarray
    similarities: np.ndarray
    k: int


def label_errors(
    neighbour_ids: np.ndarray,
    neighbour_similarities: np.ndarray,
    labels: np.ndarray,
    k: int,
) -> LabelErrors:
    """Items that look like members of one other identity (docs/audit.md, "Label errors"): their
    nearest neighbour carries it, and so do at least half of their k nearest neighbours, more than
    carry their own. Ranked by score (other - own) / k, then by the similarity to that nearest
    neighbour (higher first)."""
    ids = neighbour_ids[:, :k]
    valid = ids >= 0
    neighbour_labels = np.where(valid, labels[np.maximum(ids, 0)], -1)
    own = ((neighbour_labels == labels[:, None]) & valid).sum(axis=1)
    # The most frequent other label of each row: sort the row's other labels and count runs.
    others = np.where((neighbour_labels != labels[:, None]) & valid, neighbour_labels, -1)
    ordered = np.sort(others, axis=1)
    n_items, width = ordered.shape
    best_label = np.full(n_items, -1, dtype=np.int64)
    best_count = np.zeros(n_items, dtype=np.int64)
    for column in range(width):
        value = ordered[:, column]
        run = (ordered == value[:, None]).sum(axis=1)
        better = (value >= 0) & (run > best_count)
        best_label[better], best_count[better] = value[better], run[better]
    nearest_carries = neighbour_labels[:, 0] == best_label
    flagged = np.flatnonzero((best_count * 2 >= k) & (best_count > own) & (best_label >= 0) & nearest_carries)
    sims = neighbour_similarities[flagged, 0]
    scores = (best_count[flagged] - own[flagged]) / k
    order = np.lexsort((flagged, -sims, -scores))
    return LabelErrors(
        items=flagged[order],
        suggested=best_label[flagged][order],
        other_votes=best_count[flagged][order],
        own_votes=own[flagged][order],
        scores=scores[order].astype(np.float64),
        similarities=sims[order].astype(np.float64),
        k=k,
    )


@dataclass(frozen=True)
class MergeCandidates:
    """Pairs of identities (first < second), best first: how many of their items are closer to the other
    identity than to their own, out of how many items the two have, the share, and the mean similarity
    of those items to their nearest item of the other identity."""

    first: np.ndarray
    second: np.ndarray
    closer_items: np.ndarray
    total_items: np.ndarray
    shares: np.ndarray
    similarities: np.ndarray


def merge_candidates(
    neighbour_ids: np.ndarray,
    neighbour_similarities: np.ndarray,
    labels: np.ndarray,
    min_share: float = 0.5,
) -> MergeCandidates:
    """Identity pairs A, B where an item of A is closer to B than to any other item of A (an own
    identity absent from its neighbour list counts as farther), and the other way round, for at least
    `min_share` of the items of A and B together, with at least one item on each side. An identity of
    one image is closer to every other, so it joins a pair only through the items of the other side."""
    k = neighbour_ids.shape[1]
    valid = neighbour_ids >= 0
    neighbour_labels = np.where(valid, labels[np.maximum(neighbour_ids, 0)], -1)
    is_own = (neighbour_labels == labels[:, None]) & valid
    first_own = np.where(is_own.any(axis=1), is_own.argmax(axis=1), k)
    # An item "prefers" the identity of each neighbour ranked above its first own neighbour; the first
    # such neighbour of each identity gives the similarity.
    rank = np.arange(k)[None, :]
    before_own = valid & ~is_own & (rank < first_own[:, None])
    rows, cols = np.nonzero(before_own)
    if rows.size == 0:
        return _no_merges()
    other = neighbour_labels[rows, cols]
    sims = neighbour_similarities[rows, cols]
    # Keep one (item, other identity) entry: the best ranked, which comes first in row-major order.
    _, first_entry = np.unique(np.stack([rows, other], axis=1), axis=0, return_index=True)
    rows, other, sims = rows[first_entry], other[first_entry], sims[first_entry]
    own = labels[rows]
    low, high = np.minimum(own, other), np.maximum(own, other)
    pairs, inverse = np.unique(np.stack([low, high], axis=1), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    closer = np.bincount(inverse, minlength=len(pairs))
    from_low = np.bincount(inverse, weights=(own == low), minlength=len(pairs))
    similarity = np.bincount(inverse, weights=sims, minlength=len(pairs)) / closer
    sizes = np.bincount(labels, minlength=int(labels.max()) + 1)
    total = sizes[pairs[:, 0]] + sizes[pairs[:, 1]]
    shares = closer / total
    keep = (shares >= min_share) & (from_low > 0) & (from_low < closer)
    order = np.lexsort((pairs[keep, 1], pairs[keep, 0], -similarity[keep], -shares[keep]))
    return MergeCandidates(
        first=pairs[keep, 0][order],
        second=pairs[keep, 1][order],
        closer_items=closer[keep][order],
        total_items=total[keep][order],
        shares=shares[keep][order],
        similarities=similarity[keep][order],
    )


def _no_merges() -> MergeCandidates:
    empty = np.empty(0, dtype=np.int64)
    return MergeCandidates(empty, empty, empty, empty, np.empty(0), np.empty(0))
