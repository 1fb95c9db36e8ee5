"""Indexes for galleries of millions: IVF-PQ trained on a sample, one index split over several faiss
indexes (a file each) and searched as one, built from blocks of rows so that the gallery is never in
memory at once, and recall@k against exact search measured by streaming the gallery.

- IVF-PQ (Jégou et al., "Product quantization for nearest neighbor search", TPAMI 2011): k-means cells
  (IVF) whose residuals are coded by a product quantizer of `pq_m` sub-vectors of `pq_nbits` bits, so
  a 128-d float32 row (512 bytes) is stored in pq_m bytes. Both quantizers learn from a sample of the
  gallery (`train_size` rows), not from all of it.
- Sharding: rows [b_i, b_{i+1}) go to shard i, a copy of one trained empty index (so every shard
  shares the cells and codebooks); faiss's IndexShards searches all shards in threads and merges their
  top-k, the ids of shard i offset by the rows before it, so ids stay the gallery's row numbers.

Every index ranks by inner product: the rows are unit vectors, so that is cosine similarity.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

ShardableKind = Literal["flat", "ivf", "hnsw", "ivfpq"]

#: Rows handed to faiss per add call: bounds the temporaries of the coarse assignment.
ADD_CHUNK_ROWS = 65_536
#: Query-by-gallery similarities computed at a time by the exact search that measures recall; the
#: selection adds twice as much again (int64 positions). 16 MiB keeps 1,000 queries against a million
#: rows within about 100 MiB, at no measurable cost in time.
EXACT_CHUNK_BYTES = 16 << 20
#: faiss's k-means wants at least 39 training points per centroid; PQ codebooks have 2**nbits each.
MIN_POINTS_PER_CENTROID = 40


@dataclass(frozen=True)
class IndexSpec:
    """The faiss index to build: its kind and parameters (None: chosen from the gallery's size).

    nlist: IVF cells (default 4 * sqrt(N), as `embedlab.retrieval.knn`). pq_m: PQ sub-vectors, a divisor
    of the dimension (default: the largest divisor not above D / 8, so 16 bytes for 128-d rows).
    pq_nbits: bits per sub-vector code. train_size: rows sampled to train the IVF cells and PQ codebooks
    (default: 40 rows per cell, at least 40 per PQ centroid, at most the gallery).
    """

    kind: ShardableKind
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    nlist: int | None = None
    pq_m: int | None = None
    pq_nbits: int = 8
    train_size: int | None = None

    def resolved(self, n_rows: int, dim: int) -> IndexSpec:
        """This spec with every None replaced by its value for a gallery of n_rows (D = dim)."""
        if self.kind not in ("ivf", "ivfpq"):
            return self
        nlist = self.nlist or max(1, min(n_rows, int(4 * math.sqrt(n_rows))))
        pq_m = self.pq_m
        if self.kind == "ivfpq":
            pq_m = pq_m or max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)
            if dim % pq_m:
                raise ValueError(f"pq_m must divide the embedding size {dim}, got {pq_m}")
        wanted = max(MIN_POINTS_PER_CENTROID * nlist, MIN_POINTS_PER_CENTROID * 2**self.pq_nbits)
        train_size = min(n_rows, self.train_size or wanted)
        return replace(self, nlist=nlist, pq_m=pq_m, train_size=train_size)


def empty_index(spec: IndexSpec, dim: int, sample: np.ndarray | None) -> Any:
    """An empty inner-product index of spec.kind (a resolved spec), trained on `sample` (n, dim) float32
    when the kind learns from data (ivf, ivfpq)."""
    import faiss

    index: Any
    if spec.kind == "flat":
        return faiss.IndexFlatIP(dim)
    if spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.hnsw_ef_construction
        return index
    assert spec.nlist is not None, "resolve the spec first"
    quantizer = faiss.IndexFlatIP(dim)
    if spec.kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, spec.nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        assert spec.pq_m is not None
        index = faiss.IndexIVFPQ(
            quantizer, dim, spec.nlist, spec.pq_m, spec.pq_nbits, faiss.METRIC_INNER_PRODUCT
        )
    needed = max(spec.nlist, 2**spec.pq_nbits if spec.kind == "ivfpq" else 0)
    if sample is None or len(sample) < needed:
        raise ValueError(
            f"an {spec.kind} index of {spec.nlist} cells"
            + (f" and {2**spec.pq_nbits} codes per sub-vector" if spec.kind == "ivfpq" else "")
            + f" needs at least {needed} training rows, got {0 if sample is None else len(sample)}; "
            "choose fewer cells (nlist), or a flat or hnsw index for a gallery this small"
        )
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def shard_bounds(n_rows: int, n_shards: int) -> list[int]:
    """Row boundaries b_0 = 0 <= ... <= b_n = n_rows of n_shards contiguous, near-equal shards."""
    if n_shards < 1:
        raise ValueError(f"an index needs at least one shard, got {n_shards}")
    return [n_rows * i // n_shards for i in range(n_shards + 1)]


class ShardedIndexBuilder:
    """Adds rows in id order, block by block, to `n_shards` copies of an empty (trained) index."""

    def __init__(self, template: Any, n_rows: int, n_shards: int) -> None:
        import faiss

        self.bounds = shard_bounds(n_rows, n_shards)
        self.indexes = [faiss.clone_index(template) for _ in range(n_shards)]
        self.added = 0

    def add(self, rows: np.ndarray) -> None:
        """Add the next rows (n, D) of the gallery, in chunks of ADD_CHUNK_ROWS."""
        position = 0
        while position < len(rows):
            shard = int(np.searchsorted(self.bounds, self.added, side="right")) - 1
            if shard >= len(self.indexes):
                raise ValueError(f"more rows than the {self.bounds[-1]} the index was planned for")
            take = min(len(rows) - position, self.bounds[shard + 1] - self.added, ADD_CHUNK_ROWS)
            chunk = np.ascontiguousarray(rows[position : position + take], dtype=np.float32)
            self.indexes[shard].add(chunk)
            position += take
            self.added += take

    def finish(self) -> Any:
        if self.added != self.bounds[-1]:
            raise ValueError(f"{self.added} rows were added, the index was planned for {self.bounds[-1]}")
        return combine(self.indexes)


def combine(indexes: list[Any]) -> Any:
    """One searchable index over shards that hold consecutive id ranges in order (or the one index)."""
    import faiss

    if len(indexes) == 1:
        return indexes[0]
    combined = faiss.IndexShards(indexes[0].d, True, True)  # threaded; ids offset by earlier shards
    for index in indexes:
        combined.add_shard(index)
    return combined


def parts(index: Any) -> list[Any]:
    """The shards of an index made by `combine` (or [index])."""
    import faiss

    if isinstance(index, faiss.IndexShards):
        return [faiss.downcast_index(index.at(i)) for i in range(index.count())]
    return [index]


def add_rows(index: Any, rows: np.ndarray) -> None:
    """Append rows (ids continue from index.ntotal): to the last shard of a sharded index."""
    import faiss

    if isinstance(index, faiss.IndexShards):
        parts(index)[-1].add(np.ascontiguousarray(rows, dtype=np.float32))
        index.syncWithSubIndexes()
    else:
        index.add(np.ascontiguousarray(rows, dtype=np.float32))


def set_search_parameters(index: Any, *, nprobe: int, ef_search: int) -> None:
    """nprobe on IVF shards, efSearch on HNSW shards (read by faiss during searches only)."""
    import faiss

    for part in parts(index):
        if isinstance(part, faiss.IndexIVF):
            part.nprobe = min(nprobe, part.nlist)
        elif isinstance(part, faiss.IndexHNSW):
            part.hnsw.efSearch = ef_search


def index_bytes(index: Any) -> int:
    """The size of the serialised index (what it holds in memory, to within its small headers)."""
    import faiss

    return sum(int(faiss.serialize_index(part).size) for part in parts(index))


# --------------------------------------------------------------------------- exact search, recall


def sample_rows(n_rows: int, size: int, seed: int) -> np.ndarray:
    """`size` distinct row ids of n_rows (all of them when size >= n_rows), ascending."""
    if size >= n_rows:
        return np.arange(n_rows, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=size, replace=False)).astype(np.int64)


def _chunks(blocks: Iterable[np.ndarray], rows: int) -> Iterator[np.ndarray]:
    for block in blocks:
        for start in range(0, len(block), rows):
            yield block[start : start + rows]


def exact_neighbours(
    queries: np.ndarray, blocks: Iterable[np.ndarray], k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product of queries (Nq, D) over a gallery streamed as blocks of rows in id
    order: similarities (Nq, k) float32 and ids (Nq, k) int64, ranked by similarity descending (among
    exactly equal similarities, which ones make the top k is not specified); id -1 where the gallery
    holds fewer items. exclude (Nq,): an id each query must not find (its own row when the queries come
    from the gallery), or -1. Memory: about EXACT_CHUNK_BYTES of similarities at a time."""
    n_queries = queries.shape[0]
    best_sims = np.full((n_queries, k), -np.inf, dtype=np.float32)
    best_ids = np.full((n_queries, k), -1, dtype=np.int64)
    start = 0
    for chunk in _chunks(blocks, max(k, EXACT_CHUNK_BYTES // (4 * max(1, n_queries)))):
        sims = queries @ np.ascontiguousarray(chunk, dtype=np.float32).T
        if exclude is not None:
            rows = np.flatnonzero((exclude >= start) & (exclude < start + len(chunk)))
            sims[rows, exclude[rows] - start] = -np.inf
        keep = min(k, len(chunk))
        top = np.argpartition(sims, len(chunk) - keep, axis=1)[:, len(chunk) - keep :]
        merged_sims = np.concatenate([best_sims, np.take_along_axis(sims, top, axis=1)], axis=1)
        merged_ids = np.concatenate([best_ids, start + top], axis=1)
        order = np.argsort(-merged_sims, axis=1, kind="stable")[:, :k]
        best_sims = np.take_along_axis(merged_sims, order, axis=1)
        best_ids = np.take_along_axis(merged_ids, order, axis=1)
        start += len(chunk)
    best_ids[~np.isfinite(best_sims)] = -1
    return best_sims, best_ids


def recall_at_k(approximate_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / |exact top-k| (ids -1 ignored)."""
    hits = total = 0
    for found, truth in zip(approximate_ids, exact_ids, strict=True):
        truth = truth[truth >= 0]
        hits += np.intersect1d(found[found >= 0], truth).size
        total += truth.size
    return hits / total if total else 1.0


@dataclass(frozen=True)
class RecallEstimate:
    """recall@k of an index against exact search, over `n_queries` gallery rows used as queries (each
    excluded from its own results)."""

    k: int
    n_queries: int
    recall: float


def measure_index_recall(
    index: Any, queries: np.ndarray, query_ids: np.ndarray, blocks: Iterator[np.ndarray], k: int = 10
) -> RecallEstimate:
    """recall@k of `index` for gallery rows `queries` (their ids `query_ids`) against an exact search
    over the gallery streamed as `blocks`; each query's own row is left out of both answers."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    _, exact = exact_neighbours(queries, blocks, k, exclude=query_ids)
    _, found = index.search(queries, k + 1)
    found = np.where(found == query_ids[:, None], -1, found)
    # Keep the first k results that are not the query itself.
    order = np.argsort(found < 0, axis=1, kind="stable")[:, :k]
    approximate = np.take_along_axis(found, order, axis=1)
    return RecallEstimate(k=k, n_queries=len(query_ids), recall=recall_at_k(approximate, exact))
