"""Per-query exclusions (METRICS.md, "Setting"): a query's own row and the items of its ignore group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from embedlab.retrieval.arrays import as_id_vector


@dataclass(frozen=True)
class Exclusions:
    """Which gallery items each query must not see.

    self_index: (Nq,) int64, the gallery index of the query itself or -1 (None when nothing is excluded
    that way). Group exclusion: a query whose group code is c >= 0 is hidden from
    group_members[group_offsets[c]:group_offsets[c + 1]] (gallery indices, ascending).
    """

    self_index: np.ndarray | None
    query_group_codes: np.ndarray | None
    group_offsets: np.ndarray | None
    group_members: np.ndarray | None

    @property
    def max_per_query(self) -> int:
        """An upper bound on the number of gallery items hidden from one query."""
        largest_group = int(np.diff(self.group_offsets).max()) if self.group_offsets is not None else 0
        return largest_group + (1 if self.self_index is not None else 0)

    def gallery_group_codes(self) -> np.ndarray:
        """(Ng,) int64: the group code of every gallery item (a query's code matches its own group)."""
        assert self.group_offsets is not None and self.group_members is not None
        codes = np.empty(self.group_members.size, dtype=np.int64)
        codes[self.group_members] = np.repeat(
            np.arange(self.group_offsets.size - 1), np.diff(self.group_offsets)
        )
        return codes

    def pairs(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(row offsets within the block, gallery indices) of every exclusion of queries[start:stop]."""
        rows_parts: list[np.ndarray] = []
        cols_parts: list[np.ndarray] = []
        if self.self_index is not None:
            cols = self.self_index[start:stop]
            keep = cols >= 0
            rows_parts.append(np.flatnonzero(keep))
            cols_parts.append(cols[keep])
        if self.query_group_codes is not None:
            assert self.group_offsets is not None and self.group_members is not None
            codes = self.query_group_codes[start:stop]
            rows = np.flatnonzero(codes >= 0)
            firsts = self.group_offsets[codes[rows]]
            lengths = self.group_offsets[codes[rows] + 1] - firsts
            rows_parts.append(np.repeat(rows, lengths))
            cols_parts.append(self.group_members[concatenated_ranges(firsts, lengths)])
        if not rows_parts:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty
        return np.concatenate(rows_parts), np.concatenate(cols_parts)

    def apply(self, similarities: np.ndarray, start: int) -> None:
        """Set the excluded entries of a block of rows queries[start:start + rows] to -inf, in place."""
        rows, cols = self.pairs(start, start + similarities.shape[0])
        similarities[rows, cols] = -np.inf


def concatenated_ranges(firsts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """concatenate([arange(f, f + n) for f, n in zip(firsts, lengths)]) without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    # Each output position counts up from its range's first element.
    offsets = np.arange(total, dtype=np.int64) - np.repeat(ends - lengths, lengths)
    return np.repeat(firsts.astype(np.int64), lengths) + offsets


def make_exclusions(
    n_queries: int,
    n_gallery: int,
    *,
    exclude_self: bool = False,
    exclude_index: Any = None,
    query_groups: Any = None,
    gallery_groups: Any = None,
) -> Exclusions:
    """Build the per-query exclusions.

    exclude_self: the gallery is the query set, so query i never sees gallery item i (needs
    n_queries == n_gallery). exclude_index: (Nq,) gallery index to hide from each query, -1 for none
    (what exclude_self generalises, e.g. for subsets of one set). query_groups (Nq,) / gallery_groups
    (Ng,): integer ignore-group ids; a gallery item is hidden from every query with the same id.
    """
    if exclude_self and exclude_index is not None:
        raise ValueError("pass either exclude_self=True or exclude_index, not both.")
    self_index: np.ndarray | None = None
    if exclude_self:
        if n_queries != n_gallery:
            raise ValueError(
                f"exclude_self=True needs the gallery to be the query set, but there are {n_queries} "
                f"queries and {n_gallery} gallery items."
            )
        self_index = np.arange(n_queries, dtype=np.int64)
    elif exclude_index is not None:
        self_index = as_id_vector(exclude_index, "exclude_index", n_queries)
        if self_index.size and (self_index.min() < -1 or self_index.max() >= n_gallery):
            raise ValueError(f"exclude_index values must lie in [-1, {n_gallery - 1}].")

    if (query_groups is None) != (gallery_groups is None):
        raise ValueError("pass both query_groups and gallery_groups, or neither.")
    if query_groups is None:
        return Exclusions(self_index, None, None, None)
    qg = as_id_vector(query_groups, "query_groups", n_queries)
    gg = as_id_vector(gallery_groups, "gallery_groups", n_gallery)
    unique_groups, gallery_codes = np.unique(gg, return_inverse=True)
    members = np.argsort(gallery_codes, kind="stable").astype(np.int64)
    offsets = np.zeros(unique_groups.size + 1, dtype=np.int64)
    np.cumsum(np.bincount(gallery_codes, minlength=unique_groups.size), out=offsets[1:])
    position = np.searchsorted(unique_groups, qg)
    found = position < unique_groups.size
    found[found] = unique_groups[position[found]] == qg[found]
    query_codes = np.where(found, position, -1).astype(np.int64)
    return Exclusions(self_index, query_codes, offsets, members)


def sampled_exclusions(exclusions: Exclusions, rows: np.ndarray) -> Exclusions:
    """The exclusions of the queries `rows` (int64 positions), for searching queries[rows] alone."""
    return Exclusions(
        None if exclusions.self_index is None else exclusions.self_index[rows],
        None if exclusions.query_group_codes is None else exclusions.query_group_codes[rows],
        exclusions.group_offsets,
        exclusions.group_members,
    )
