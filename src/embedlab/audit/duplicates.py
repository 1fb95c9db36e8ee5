"""Duplicate groups and what they mean for a score (docs/audit.md, "Duplicates").

Exact duplicates share a pixel hash (hashing.py); near duplicates are items whose embeddings are at
least as similar as `threshold`, joined into groups by connected components (A like B and B like C is
one group). A group is then sorted by what its members are:

- within_identity: one identity, and no leak (harmless, though it weighs that identity twice);
- across_identities: more than one identity (a label conflict: the same picture under two names);
- leak_train_validation: a training and a validation item (the model has seen a scored picture);
- leak_query_gallery: a query and another gallery item of its identity (the query finds its copy).

A group may have several kinds. Validation members of a leak or a conflict are the items that an
evaluation holds out to report the score without them (`held_out`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from embedlab.audit.items import TRAIN, VALIDATION, AuditItems

WITHIN_IDENTITY = "within_identity"
ACROSS_IDENTITIES = "across_identities"
LEAK_TRAIN_VALIDATION = "leak_train_validation"
LEAK_QUERY_GALLERY = "leak_query_gallery"
LEAKS = (LEAK_TRAIN_VALIDATION, LEAK_QUERY_GALLERY)


@dataclass(frozen=True)
class DuplicateGroup:
    """Items (ascending) that are copies of one another; evidence: per member, its pixel hash (exact) or
    its highest similarity to another member (near); kinds: see the module docstring."""

    members: np.ndarray
    kinds: tuple[str, ...]
    evidence: list[str]

    @property
    def is_leak(self) -> bool:
        return any(kind in LEAKS for kind in self.kinds)

    @property
    def is_conflict(self) -> bool:
        return ACROSS_IDENTITIES in self.kinds


def group_kinds(members: np.ndarray, items: AuditItems) -> tuple[str, ...]:
    """The kinds of a group of items (see the module docstring), in a fixed order."""
    labels = items.labels[members]
    split = items.split[members]
    kinds = []
    if np.unique(labels).size > 1:
        kinds.append(ACROSS_IDENTITIES)
    if (split == TRAIN).any() and (split == VALIDATION).any():
        kinds.append(LEAK_TRAIN_VALIDATION)
    queries = members[items.is_query[members]]
    gallery = members[items.is_gallery[members]]
    if any(((items.labels[gallery] == items.labels[q]) & (gallery != q)).any() for q in queries):
        kinds.append(LEAK_QUERY_GALLERY)
    if not kinds:
        kinds.append(WITHIN_IDENTITY)
    return tuple(kinds)


def exact_groups(hashes: list[str], items: AuditItems) -> list[DuplicateGroup]:
    """Groups of two or more items with one pixel hash, in order of their first member."""
    codes, inverse = np.unique(np.array(hashes, dtype=object).astype(str), return_inverse=True)
    counts = np.bincount(inverse, minlength=codes.size)
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    groups = []
    for code in np.flatnonzero(counts > 1):
        members = np.sort(order[bounds[code] : bounds[code + 1]])
        groups.append(DuplicateGroup(members, group_kinds(members, items), [str(codes[code])] * members.size))
    return sorted(groups, key=lambda group: int(group.members[0]))


def near_pairs(
    neighbour_ids: np.ndarray, neighbour_similarities: np.ndarray, threshold: float, hashes: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first items, second items, similarities) of the neighbour pairs at or above `threshold` whose
    pixels differ (an exact copy is not also a near one); each pair once, first < second."""
    n_items, k = neighbour_ids.shape
    rows = np.repeat(np.arange(n_items), k)
    cols = neighbour_ids.ravel()
    sims = neighbour_similarities.ravel()
    keep = (cols >= 0) & (sims >= threshold)
    rows, cols, sims = rows[keep], cols[keep], sims[keep]
    digest = np.array(hashes, dtype=object)
    differ = digest[rows] != digest[cols]
    rows, cols, sims = rows[differ], cols[differ], sims[differ]
    first, second = np.minimum(rows, cols), np.maximum(rows, cols)
    pairs, unique = np.unique(np.stack([first, second], axis=1), axis=0, return_index=True)
    if pairs.size == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.float32)
    return pairs[:, 0], pairs[:, 1], sims[unique]


def near_groups(
    neighbour_ids: np.ndarray,
    neighbour_similarities: np.ndarray,
    threshold: float,
    hashes: list[str],
    items: AuditItems,
) -> list[DuplicateGroup]:
    """Connected components of the near pairs (`near_pairs`), in order of their first member; each
    member's evidence is its highest similarity to another member of its group."""
    first, second, sims = near_pairs(neighbour_ids, neighbour_similarities, threshold, hashes)
    if first.size == 0:
        return []
    n_items = len(items)
    graph = coo_matrix((np.ones(first.size), (first, second)), shape=(n_items, n_items))
    _, component = connected_components(graph, directed=False)
    best = np.full(n_items, -np.inf)
    np.maximum.at(best, first, sims)
    np.maximum.at(best, second, sims)
    linked = np.unique(np.concatenate([first, second]))
    groups = []
    for code in np.unique(component[linked]):
        members = linked[component[linked] == code]
        evidence = [f"{best[m]:.4f}" for m in members]
        groups.append(DuplicateGroup(members, group_kinds(members, items), evidence))
    return sorted(groups, key=lambda group: int(group.members[0]))


def held_out_items(groups: list[DuplicateGroup], items: AuditItems) -> np.ndarray:
    """The validation members (ascending) of the groups that leak or conflict: what an evaluation
    holds out to report the score without them."""
    chosen = [g.members for g in groups if g.is_leak or g.is_conflict]
    if not chosen:
        return np.empty(0, dtype=np.int64)
    members = np.unique(np.concatenate(chosen))
    return members[items.split[members] == VALIDATION]


def derive_near_threshold(copy_similarities: np.ndarray, share: float = 0.95) -> float:
    """The similarity that `share` of an image's own resized, re-encoded copies reach: the lower
    (1 - share) quantile of their similarities to the originals."""
    if copy_similarities.size == 0:
        raise ValueError("deriving a near-duplicate threshold needs at least one copy")
    return float(np.quantile(copy_similarities, 1.0 - share))
