"""Exact search: the similarity matrix block by block of queries, ranked, in bounded memory.

Exact search is a chunked matrix product: queries are processed in blocks of rows whose similarity block
(rows x gallery size) fits in `max_memory_bytes`, so no N x N matrix is ever built. Measured on this
project's 2-core reference machine for 1,024 queries against 50,000 items: faiss's `IndexFlatIP` took
0.19 s for k = 100 and 1.09 s for k = 5,000 (it keeps a heap per query); the matrix product took 0.11 s
and the partition-based selection about 0.06 s more on two threads, whatever k. The product also applies
per-query exclusions and the tie rule directly, hence it is the exact backend. A gallery too large for
memory is searched exactly by `exact_neighbours`, streamed block by block of gallery rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from embedlab.retrieval.exclusions import Exclusions
from embedlab.retrieval.threads import default_num_threads, threaded_product
from embedlab.retrieval.topk import NeighbourBlock, Workspace, merge_top_k, top_k

DEFAULT_MAX_MEMORY_BYTES = 1 << 30
# Working bytes per similarity of a block: the float32 similarity itself plus argpartition's int64
# index array (or a sorted float32 copy) and boolean masks.
SEARCH_BYTES_PER_SIMILARITY = 16
#: Similarities of a block that a search aims for, below its max_memory_bytes (see iter_similarity_blocks).
BLOCK_TARGET_BYTES = 128 << 20
#: Query-by-gallery similarities computed at a time by `exact_neighbours` over a streamed gallery; the
#: selection adds twice as much again (int64 positions). 16 MiB keeps 1,000 queries against a million
#: rows within about 100 MiB, at no measurable cost in time.
EXACT_CHUNK_BYTES = 16 << 20


@dataclass(frozen=True)
class SimilarityBlock:
    """Similarities of queries[start:stop] to the whole gallery, shape (stop - start, n_gallery).

    Excluded items hold -inf. The array is a reused buffer: it is overwritten by the next block, so copy
    whatever must outlive the iteration step.
    """

    start: int
    stop: int
    similarities: np.ndarray


def rows_per_block(n_gallery: int, max_memory_bytes: int, bytes_per_similarity: int) -> int:
    """How many query rows of similarities (and their temporaries) fit in `max_memory_bytes`."""
    if max_memory_bytes <= 0:
        raise ValueError(f"max_memory_bytes must be positive, got {max_memory_bytes}.")
    row_bytes = max(1, n_gallery) * bytes_per_similarity
    rows = max_memory_bytes // row_bytes
    if rows < 1:
        raise ValueError(
            f"max_memory_bytes={max_memory_bytes} cannot hold one query row against {n_gallery} gallery "
            f"items (needs {row_bytes} bytes); raise it."
        )
    return int(rows)


def iter_similarity_blocks(
    queries: np.ndarray,
    gallery: np.ndarray,
    exclusions: Exclusions,
    *,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    bytes_per_similarity: int = SEARCH_BYTES_PER_SIMILARITY,
) -> Iterator[SimilarityBlock]:
    """Yield the similarity matrix block by block of query rows, exclusions set to -inf.

    queries (Nq, D) and gallery (Ng, D): prepared float32 matrices (see `prepare_embeddings`).
    Rows per block: as many as fit `max_memory_bytes` at `bytes_per_similarity` working bytes each.
    """
    n_queries, n_gallery = queries.shape[0], gallery.shape[0]
    cap = rows_per_block(n_gallery, max_memory_bytes, bytes_per_similarity)
    # max_memory_bytes is a cap, not a target: first touching fresh memory cost 4 s per GiB on the
    # reference virtual machine, so blocks of about 128 MiB of similarities are reused instead, with at
    # least 256 rows so that the matrix product stays efficient. (Each product reads the whole gallery:
    # against 50,000 items, 128 MiB blocks ran the evaluation's products in 5.3 s where 64 MiB took 6.2;
    # 256 and 384 MiB saved no more and slowed the ranking.)
    target = max(256, BLOCK_TARGET_BYTES // (4 * max(1, n_gallery)))
    rows = max(1, min(n_queries, cap, target))
    buffer = np.empty((rows, n_gallery), dtype=np.float32)
    gallery_t = gallery.T
    threads = default_num_threads()
    for start in range(0, n_queries, rows):
        stop = min(start + rows, n_queries)
        block = buffer[: stop - start]
        threaded_product(queries[start:stop], gallery_t, block, threads)
        exclusions.apply(block, start)
        yield SimilarityBlock(start, stop, block)


def iter_exact_neighbour_blocks(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    exclusions: Exclusions,
    *,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    num_threads: int | None = None,
) -> Iterator[NeighbourBlock]:
    """Yield the exact top-k of prepared queries (Nq, D) in a gallery (Ng, D), block by block of queries:
    each similarity block ranked with `top_k`."""
    workspace = Workspace()
    for block in iter_similarity_blocks(queries, gallery, exclusions, max_memory_bytes=max_memory_bytes):
        sims, idx = top_k(block.similarities, k, num_threads=num_threads, workspace=workspace)
        yield NeighbourBlock(block.start, block.stop, sims, idx)


def _chunks(blocks: Iterable[np.ndarray], rows: int) -> Iterator[np.ndarray]:
    for block in blocks:
        for start in range(0, len(block), rows):
            yield block[start : start + rows]


def exact_neighbours(
    queries: np.ndarray, blocks: Iterable[np.ndarray], k: int, exclusions: Exclusions
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product of queries (Nq, D) over a gallery streamed as blocks of rows in id
    order: similarities (Nq, k) float32 and ids (Nq, k) int64, ranked by the METRICS.md rule
    (similarity descending, ties by id ascending, as `top_k` ranks a gallery in memory); (-inf, -1)
    where fewer items remain. exclusions: of these queries, gallery indices being ids (for example a
    query's own row when the queries come from the gallery). Memory: about EXACT_CHUNK_BYTES of
    similarities at a time."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n_queries = queries.shape[0]
    best = (np.full((n_queries, k), -np.inf, dtype=np.float32), np.full((n_queries, k), -1, dtype=np.int64))
    hidden_rows, hidden_ids = exclusions.pairs(0, n_queries)
    workspace = Workspace()
    start = 0
    for chunk in _chunks(blocks, max(k, EXACT_CHUNK_BYTES // (4 * max(1, n_queries)))):
        sims = queries @ np.ascontiguousarray(chunk, dtype=np.float32).T
        inside = (hidden_ids >= start) & (hidden_ids < start + len(chunk))
        sims[hidden_rows[inside], hidden_ids[inside] - start] = -np.inf
        chunk_sims, chunk_ids = top_k(sims, k, workspace=workspace)
        best = merge_top_k(best, (chunk_sims, np.where(chunk_ids < 0, -1, chunk_ids + start)), k)
        start += len(chunk)
    return best
