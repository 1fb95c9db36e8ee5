"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), on neighbour lists and sparse vectors instead of dense N x N matrices.

The items are the gallery plus the queries that are not gallery items themselves (all the queries with a
separate gallery, none when a set is searched in itself): the method is transductive. With d(x, y) = (1 -
cos(x, y)) / 2, the squared Euclidean distance of unit vectors over its largest value 4 (the reference
divides by each column's maximum instead, which makes one item's distances depend on the whole set):

1. N(i, k): item i followed by its k nearest other items. R(i, k) keeps the j in N(i, k) whose own
   N(j, k) contains i (k-reciprocal neighbours).
2. R*(i): R(i, k1) plus, for each candidate c in R(i, k1), all of R(c, round(k1 / 2)) when more than
   two thirds of it lies in R(i, k1).
3. V(i): a sparse vector over the items, exp(-d(i, j)) on R*(i), normalised to sum 1; then local query
   expansion: V(i) <- mean of V over N(i, k2 - 1) (i and its k2 - 1 nearest).
4. Jaccard distance J(q, g) = 1 - m / (2 - m) with m = sum_j min(V(q)_j, V(g)_j); final distance
   (1 - lambda) J(q, g) + lambda d(q, g).

The re-ranking is applied to the evaluation engine's similarity blocks as the equivalent score
lambda * cos / 2 + (1 - lambda) m / (2 - m), which ranks as the negated final distance. m is non-zero only
where V(q) and V(g) share an item, so each block of queries is scored from the sparse columns of V
(memory grows with the items times their neighbourhood sizes, never with N x N). An item's neighbour
lists leave out what is hidden from it (its ignore group), as everywhere in embedlab.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

from embedlab.retrieval.exact import DEFAULT_MAX_MEMORY_BYTES
from embedlab.retrieval.exclusions import concatenated_ranges, make_exclusions
from embedlab.retrieval.search import iter_neighbour_blocks

# (item, candidate, half-set member, R member) comparisons per block when expanding R(i, k1).
_EXPANSION_BLOCK_ROWS = 1024
# Bytes per (query, shared item, gallery item) triple while a block's overlaps are summed.
_BYTES_PER_TRIPLE = 40
# Float64 sums of a block's overlaps held at once.
_SUM_BLOCK_BYTES = 64 << 20
# (item, member) pairs whose similarity is computed at once: two gathered (pairs, D) arrays.
_PAIRS_PER_CHUNK = 1 << 16


@dataclass(frozen=True)
class KReciprocalParameters:
    """k1: neighbourhood of the k-reciprocal sets; k2: local query expansion; lambda_value: weight of
    the original distance in the final one (0: Jaccard distance only, 1: no re-ranking)."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3

    def __post_init__(self) -> None:
        if self.k1 < 1 or self.k2 < 1:
            raise ValueError(f"k1 and k2 must be >= 1, got k1={self.k1}, k2={self.k2}.")
        if not 0.0 <= self.lambda_value <= 1.0:
            raise ValueError(f"lambda must lie in [0, 1], got {self.lambda_value}.")


def neighbour_lists(
    items: np.ndarray, depth: int, groups: np.ndarray | None, max_memory_bytes: int
) -> np.ndarray:
    """(N, depth + 1) int64: each item itself, then its `depth` nearest other items (-1 where fewer)."""
    n = items.shape[0]
    lists = np.full((n, depth + 1), -1, dtype=np.int64)
    lists[:, 0] = np.arange(n)
    depth = min(depth, n - 1)
    if depth == 0:
        return lists
    exclusions = make_exclusions(n, n, exclude_self=True, query_groups=groups, gallery_groups=groups)
    for block in iter_neighbour_blocks(items, items, depth, exclusions, max_memory_bytes=max_memory_bytes):
        lists[block.start : block.stop, 1 : depth + 1] = block.indices
    return lists


def reciprocal_neighbours(lists: np.ndarray, k: int) -> np.ndarray:
    """R(i, k) for every item: the entries j of lists[i, :k + 1] with i in lists[j, :k + 1], else -1."""
    forward = lists[:, : k + 1]
    reciprocal = np.full_like(forward, -1)
    for start in range(0, forward.shape[0], _EXPANSION_BLOCK_ROWS):
        rows = forward[start : start + _EXPANSION_BLOCK_ROWS]
        own = np.arange(start, start + rows.shape[0])[:, None, None]
        backward = forward[np.maximum(rows, 0)]
        keep = (rows >= 0) & (backward == own).any(axis=2)
        reciprocal[start : start + rows.shape[0]] = np.where(keep, rows, -1)
    return reciprocal


def expanded_reciprocal_sets(
    reciprocal: np.ndarray, half_reciprocal: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """R*(i) as (rows, items): R(i, k1) plus each candidate's R(c, k1 / 2) that lies more than two thirds
    inside R(i, k1). reciprocal (N, k1 + 1) and half_reciprocal (N, k1 / 2 + 1) hold -1 for no entry."""
    rows_out: list[np.ndarray] = []
    items_out: list[np.ndarray] = []
    for start in range(0, reciprocal.shape[0], _EXPANSION_BLOCK_ROWS):
        own = reciprocal[start : start + _EXPANSION_BLOCK_ROWS]
        candidates_half = np.where(own[:, :, None] >= 0, half_reciprocal[np.maximum(own, 0)], -1)
        half_size = (candidates_half >= 0).sum(axis=2)
        # (rows, candidates, half-set members): is the member also in R(i, k1)? Absent (-1) members are
        # masked, as they would match R(i, k1)'s own padding.
        in_own = (candidates_half[..., None] == own[:, None, None, :]).any(axis=3) & (candidates_half >= 0)
        accepted = in_own.sum(axis=2) > 2.0 / 3.0 * half_size
        added = np.where(accepted[:, :, None], candidates_half, -1).reshape(own.shape[0], -1)
        members = np.sort(np.concatenate([own, added], axis=1), axis=1)
        first = np.ones_like(members, dtype=bool)
        first[:, 1:] = members[:, 1:] != members[:, :-1]
        r, c = np.nonzero(first & (members >= 0))
        rows_out.append(start + r)
        items_out.append(members[r, c])
    return np.concatenate(rows_out), np.concatenate(items_out)


def encode(items: np.ndarray, lists: np.ndarray, parameters: KReciprocalParameters) -> sparse.csr_matrix:
    """The sparse k-reciprocal vectors V (N, N) after local query expansion, float32, rows summing to 1."""
    n = items.shape[0]
    k1 = min(parameters.k1, lists.shape[1] - 1)
    reciprocal = reciprocal_neighbours(lists, k1)
    half_reciprocal = reciprocal_neighbours(lists, int(np.around(k1 / 2)))
    rows, members = expanded_reciprocal_sets(reciprocal, half_reciprocal)
    similarity = np.empty(rows.size, dtype=np.float32)
    for start in range(0, rows.size, _PAIRS_PER_CHUNK):
        chunk = slice(start, start + _PAIRS_PER_CHUNK)
        similarity[chunk] = np.einsum("nd,nd->n", items[rows[chunk]], items[members[chunk]])
    weights = np.exp(-(1.0 - similarity) / 2.0)
    weights /= np.bincount(rows, weights=weights, minlength=n)[rows]
    vectors = sparse.csr_matrix((weights.astype(np.float32), (rows, members)), shape=(n, n))
    if parameters.k2 == 1:
        return vectors
    expansion = lists[:, : parameters.k2]
    present = expansion >= 0
    r, c = np.nonzero(present)
    share = (1.0 / present.sum(axis=1))[r]
    averaging = sparse.csr_matrix((share.astype(np.float32), (r, expansion[r, c])), shape=(n, n))
    return (averaging @ vectors).tocsr()


class KReciprocalReranker:
    """Re-scores the evaluation engine's similarity blocks by k-reciprocal re-ranking (a `Rescorer`).

    queries (Nq, D) and gallery (Ng, D): the unit embeddings the engine ranks. exclude_index (Nq,): the
    gallery index of each query's own item, -1 for none (a set searched in itself: numpy.arange(Nq)); such
    a query is that gallery item in the neighbourhood graph, the other queries are added to it.
    query_groups / gallery_groups: ignore-group ids.
    """

    def __init__(
        self,
        queries: np.ndarray,
        gallery: np.ndarray,
        parameters: KReciprocalParameters,
        *,
        exclude_index: Any = None,
        query_groups: Any = None,
        gallery_groups: Any = None,
        max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    ) -> None:
        self.parameters = parameters
        self.max_memory_bytes = max_memory_bytes
        n_queries, n_gallery = queries.shape[0], gallery.shape[0]
        own = make_exclusions(n_queries, n_gallery, exclude_index=exclude_index).self_index
        own = np.full(n_queries, -1, dtype=np.int64) if own is None else own
        added = np.flatnonzero(own < 0)
        items = np.concatenate([gallery, queries[added]])
        query_rows = own.copy()
        query_rows[added] = n_gallery + np.arange(added.size)
        groups = None
        if query_groups is not None:
            groups = np.concatenate([np.asarray(gallery_groups), np.asarray(query_groups)[added]])
        depth = max(parameters.k1, parameters.k2 - 1)
        vectors = encode(items, neighbour_lists(items, depth, groups, max_memory_bytes), parameters)
        self._query_vectors = vectors[query_rows]
        self._gallery_columns = vectors[:n_gallery].tocsc()
        self.n_gallery = n_gallery

    def overlaps(self, start: int, stop: int) -> np.ndarray:
        """m(q, g) = sum_j min(V(q)_j, V(g)_j) for queries[start:stop] against every gallery item,
        float32 (stop - start, Ng)."""
        n_gallery = self.n_gallery
        block = self._query_vectors[start:stop]
        column_sizes = np.diff(self._gallery_columns.indptr)
        triples_per_row = np.add.reduceat(
            np.concatenate([column_sizes[block.indices], [0]]), block.indptr[:-1]
        ) * (np.diff(block.indptr) > 0)
        out = np.empty((stop - start, n_gallery), dtype=np.float32)
        budget = max(1, self.max_memory_bytes // _BYTES_PER_TRIPLE)
        # bincount sums in float64: bound its (rows, Ng) output like an engine block.
        max_rows = max(1, _SUM_BLOCK_BYTES // (8 * n_gallery))
        row = 0
        while row < block.shape[0]:
            fitting = int(np.searchsorted(np.cumsum(triples_per_row[row:]), budget, side="right"))
            last = row + min(max_rows, max(1, fitting))
            chunk = block[row:last]
            entry_rows = np.repeat(np.arange(chunk.shape[0]), np.diff(chunk.indptr))
            sizes = column_sizes[chunk.indices]
            positions = concatenated_ranges(self._gallery_columns.indptr[chunk.indices], sizes)
            smaller = np.minimum(np.repeat(chunk.data, sizes), self._gallery_columns.data[positions])
            keys = np.repeat(entry_rows, sizes) * n_gallery + self._gallery_columns.indices[positions]
            out[row:last] = np.bincount(keys, weights=smaller, minlength=chunk.shape[0] * n_gallery).reshape(
                chunk.shape[0], n_gallery
            )
            row = last
        return out

    def __call__(self, similarities: np.ndarray, start: int, stop: int) -> None:
        hidden = np.isneginf(similarities)
        jaccard_similarity = self.overlaps(start, stop)
        jaccard_similarity /= 2.0 - jaccard_similarity
        weight = self.parameters.lambda_value
        # In place, in float32: the block is the engine's buffer and as large as it allows.
        similarities[hidden] = 0.0
        similarities *= weight / 2.0
        jaccard_similarity *= 1.0 - weight
        similarities += jaccard_similarity
        similarities[hidden] = -np.inf
