"""Gallery labels as dense codes with their members, and each query's positive count R after exclusions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedlab.retrieval.exclusions import Exclusions


@dataclass(frozen=True)
class LabelIndex:
    """Gallery labels as dense codes, with the gallery members of each code (ascending indices)."""

    unique: np.ndarray
    gallery_codes: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray
    members: np.ndarray

    @classmethod
    def build(cls, gallery_labels: np.ndarray) -> LabelIndex:
        unique, codes = np.unique(gallery_labels, return_inverse=True)
        counts = np.bincount(codes, minlength=unique.size).astype(np.int64)
        offsets = np.concatenate(([0], np.cumsum(counts)))
        members = np.argsort(codes, kind="stable").astype(np.int64)
        return cls(unique, codes.astype(np.int64), counts, offsets, members)

    def codes_of(self, labels: np.ndarray) -> np.ndarray:
        """Codes of arbitrary labels, -1 for labels absent from the gallery."""
        position = np.searchsorted(self.unique, labels)
        found = position < self.unique.size
        found[found] = self.unique[position[found]] == labels[found]
        return np.where(found, position, -1).astype(np.int64)


def positive_counts(
    query_codes: np.ndarray, labels: LabelIndex, exclusions: Exclusions, start: int, stop: int
) -> np.ndarray:
    """R for queries[start:stop]: gallery items of the query's label minus the excluded ones."""
    codes = query_codes[start:stop]
    counts = np.where(codes >= 0, labels.counts[np.maximum(codes, 0)], 0)
    rows, cols = exclusions.pairs(start, stop)
    if rows.size:
        # The own row can also be a group member: count each excluded pair once.
        pairs = np.unique(rows.astype(np.int64) * labels.gallery_codes.size + cols)
        rows, cols = np.divmod(pairs, labels.gallery_codes.size)
        same_label = labels.gallery_codes[cols] == codes[rows]
        counts = counts - np.bincount(rows[same_label], minlength=codes.size)
    return counts.astype(np.int64)
