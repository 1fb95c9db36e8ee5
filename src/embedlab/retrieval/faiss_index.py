"""faiss indexes built from one spec (exact, HNSW, IVF, IVF-PQ), in one file or split over shards.

- Exact search through faiss is `IndexFlatIP`; HNSW is `IndexHNSWFlat`; IVF is `IndexIVFFlat`.
- IVF-PQ (Jégou et al., "Product quantization for nearest neighbor search", TPAMI 2011): k-means cells
  (IVF) whose residuals are coded by a product quantizer of `pq_m` sub-vectors of `pq_nbits` bits, so
  a 128-d float32 row (512 bytes) is stored in pq_m bytes. Both quantizers learn from a sample of the
  gallery (`train_size` rows), not from all of it.
- Sharding: rows [b_i, b_{i+1}) go to shard i, a copy of one trained empty index (so every shard
  shares the cells and codebooks); faiss's IndexShards searches all shards in threads and merges their
  top-k, the ids of shard i offset by the rows before it, so ids stay the gallery's row numbers.

Every index ranks by inner product: on unit rows, that is cosine similarity. Searching an index
(`iter_index_neighbour_blocks`) drops the per-query exclusions and re-ranks what faiss returned by the
METRICS.md tie rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from embedlab.retrieval.arrays import check_choice, sample_rows
from embedlab.retrieval.exact import BLOCK_TARGET_BYTES, DEFAULT_MAX_MEMORY_BYTES, rows_per_block
from embedlab.retrieval.exclusions import Exclusions
from embedlab.retrieval.topk import NeighbourBlock, ordered_keys

IndexKind = Literal["exact", "hnsw", "ivf", "ivfpq"]

INDEX_KINDS: tuple[IndexKind, ...] = ("exact", "hnsw", "ivf", "ivfpq")

#: Rows handed to faiss per add call: bounds the temporaries of the coarse assignment.
ADD_CHUNK_ROWS = 65_536
#: faiss's k-means wants at least 39 training points per centroid; PQ codebooks have 2**nbits each.
MIN_POINTS_PER_CENTROID = 40


@dataclass(frozen=True)
class IndexOptions:
    """Parameters of the approximate faiss indexes (exact search has none); None: chosen from the
    gallery's size by `resolved`.

    hnsw_m: neighbours per HNSW node. hnsw_ef_construction / hnsw_ef_search: HNSW candidate list sizes
    at build and at search time (search uses at least the number of neighbours fetched).
    ivf_nlist: IVF cells (ivf, ivfpq), default 4 * sqrt(gallery size). ivf_nprobe: cells visited per
    query. pq_m: IVF-PQ sub-vectors, a divisor of the dimension (default: the largest divisor not above
    D / 8, so 16 bytes for 128-d rows). pq_nbits: bits per sub-vector code. train_size: rows sampled to
    train the IVF cells and PQ codebooks (default: 40 rows per cell, at least 40 per PQ centroid, at most
    the gallery).
    """

    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nlist: int | None = None
    ivf_nprobe: int = 16
    pq_m: int | None = None
    pq_nbits: int = 8
    train_size: int | None = None

    def resolved(self, kind: IndexKind, n_rows: int, dim: int) -> IndexOptions:
        """These options with every None that `kind` uses replaced by its value for a gallery of n_rows
        (D = dim)."""
        if kind not in ("ivf", "ivfpq"):
            return self
        nlist = self.ivf_nlist or max(1, min(n_rows, int(4 * math.sqrt(n_rows))))
        pq_m = self.pq_m
        if kind == "ivfpq":
            pq_m = pq_m or max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)
            if dim % pq_m:
                raise ValueError(f"pq_m must divide the embedding size {dim}, got {pq_m}")
        wanted = max(MIN_POINTS_PER_CENTROID * nlist, MIN_POINTS_PER_CENTROID * 2**self.pq_nbits)
        train_size = min(n_rows, self.train_size or wanted)
        return replace(self, ivf_nlist=nlist, pq_m=pq_m, train_size=train_size)


def empty_index(kind: IndexKind, dim: int, options: IndexOptions, sample: np.ndarray | None) -> Any:
    """An empty inner-product index of `kind` with resolved `options`, trained on `sample` (n, dim)
    float32 when the kind learns from data (ivf, ivfpq)."""
    import faiss

    check_choice(kind, INDEX_KINDS, "kind")
    index: Any
    if kind == "exact":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = options.hnsw_ef_construction
        return index
    nlist = options.ivf_nlist
    assert nlist is not None, "resolve the options first"
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        assert options.pq_m is not None
        index = faiss.IndexIVFPQ(
            quantizer, dim, nlist, options.pq_m, options.pq_nbits, faiss.METRIC_INNER_PRODUCT
        )
    needed = max(nlist, 2**options.pq_nbits if kind == "ivfpq" else 0)
    if sample is None or len(sample) < needed:
        raise ValueError(
            f"an {kind} index of {nlist} cells"
            + (f" and {2**options.pq_nbits} codes per sub-vector" if kind == "ivfpq" else "")
            + f" needs at least {needed} training rows, got {0 if sample is None else len(sample)}; "
            "choose fewer cells (nlist), or a flat or hnsw index for a gallery this small"
        )
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def build_index(gallery: np.ndarray, kind: IndexKind, *, options: IndexOptions | None = None) -> Any:
    """A faiss inner-product index of `kind` over prepared gallery embeddings (Ng, D) float32 in memory,
    its search parameters set from `options`.

    The cells of ivf and ivfpq learn from the whole gallery unless options.train_size asks for a sample.
    """
    n, dim = gallery.shape
    opts = options or IndexOptions()
    opts = replace(opts, train_size=opts.train_size or n).resolved(kind, n, dim)
    sample = None
    if kind in ("ivf", "ivfpq"):
        assert opts.train_size is not None
        sample = gallery if opts.train_size >= n else gallery[sample_rows(n, opts.train_size, seed=0)]
    index = empty_index(kind, dim, opts, sample)
    # One add call: HNSW inserts each call's rows by level, so chunks would build another graph.
    index.add(gallery)
    set_search_parameters(index, nprobe=opts.ivf_nprobe, ef_search=opts.hnsw_ef_search)
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


def _filter_and_rank(
    sims: np.ndarray, idx: np.ndarray, exclusions: Exclusions, start: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Drop excluded and missing (-1) candidates from over-fetched rows, re-rank by the tie rule, cut to k."""
    n = sims.shape[0]
    drop = idx < 0
    safe_idx = np.where(drop, 0, idx)
    if exclusions.self_index is not None:
        drop |= idx == exclusions.self_index[start : start + n, None]
    if exclusions.query_group_codes is not None:
        codes = exclusions.query_group_codes[start : start + n, None]
        drop |= (exclusions.gallery_group_codes()[safe_idx] == codes) & (codes >= 0)
    sims = np.where(drop, -np.inf, sims).astype(np.float32)
    safe_idx[drop] = 0
    order = np.argsort(ordered_keys(sims, safe_idx), axis=1)[:, :k]
    ranked_sims = np.take_along_axis(sims, order, axis=1)
    ranked_idx = np.where(ranked_sims == -np.inf, -1, np.take_along_axis(safe_idx, order, axis=1))
    out_sims = np.full((n, k), -np.inf, dtype=np.float32)
    out_idx = np.full((n, k), -1, dtype=np.int64)
    out_sims[:, : ranked_sims.shape[1]] = ranked_sims
    out_idx[:, : ranked_idx.shape[1]] = ranked_idx
    return out_sims, out_idx


def iter_index_neighbour_blocks(
    index: Any,
    queries: np.ndarray,
    k: int,
    exclusions: Exclusions,
    *,
    options: IndexOptions,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
) -> Iterator[NeighbourBlock]:
    """Yield the top-k of prepared queries (Nq, D) found by a faiss index, block by block of queries.

    Fetches k plus the most items any query can have excluded, then drops the exclusions and re-ranks
    what was returned by the tie rule. The index's search parameters are set from `options` first
    (efSearch at least the number fetched).
    """
    fetch = min(int(index.ntotal), k + exclusions.max_per_query)
    set_search_parameters(index, nprobe=options.ivf_nprobe, ef_search=max(options.hnsw_ef_search, fetch))
    # Result rows hold `fetch` floats, int64s and int64 keys; bound them like a similarity block.
    rows = min(rows_per_block(fetch, max_memory_bytes, 32), max(256, BLOCK_TARGET_BYTES // (32 * fetch)))
    for start in range(0, queries.shape[0], rows):
        stop = min(start + rows, queries.shape[0])
        sims, idx = index.search(queries[start:stop], fetch)
        sims, idx = _filter_and_rank(
            sims.astype(np.float32, copy=False), idx.astype(np.int64, copy=False), exclusions, start, k
        )
        yield NeighbourBlock(start, stop, sims, idx)
