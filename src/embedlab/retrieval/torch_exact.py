"""Exact search with torch on a device: similarity blocks by matrix product, sized from free memory,
retried with smaller blocks when the device runs out of memory.

Query blocks are sized from the free device memory on a GPU (`torch.cuda.mem_get_info`), and from
`max_memory_bytes` on the CPU, and never hold more than MAX_BLOCK_ELEMENTS similarities (torch's CUDA
selection and nonzero kernels index with 32-bit sizes). A block that still does not fit (many tied
candidates, another process taking memory) is halved and computed again, down to one row.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
import torch

from embedlab.retrieval.exact import DEFAULT_MAX_MEMORY_BYTES, rows_per_block
from embedlab.retrieval.exclusions import Exclusions
from embedlab.retrieval.topk import NeighbourBlock
from embedlab.retrieval.torch_topk import torch_top_k

LOGGER = logging.getLogger(__name__)

#: Device bytes per similarity of a block: the float32 value, the candidate masks and top-k's scratch.
DEVICE_BYTES_PER_SIMILARITY = 16
#: Similarities of one block at most: below 2**31, the sizes torch's CUDA kernels index with.
MAX_BLOCK_ELEMENTS = 1 << 30
# Of the free device memory, what a block may take: the rest is left to the allocator's fragments.
_FREE_MEMORY_SHARE = 0.75

Product = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
T = TypeVar("T")


def block_rows(
    device: torch.device,
    n_queries: int,
    n_gallery: int,
    *,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    bytes_per_similarity: int = DEVICE_BYTES_PER_SIMILARITY,
) -> int:
    """Query rows per block: from the free memory of a CUDA device, else from max_memory_bytes."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        rows = int(free * _FREE_MEMORY_SHARE) // (max(1, n_gallery) * bytes_per_similarity)
    else:
        rows = rows_per_block(n_gallery, max_memory_bytes, bytes_per_similarity)
    return max(1, min(n_queries, rows, MAX_BLOCK_ELEMENTS // max(1, n_gallery)))


def iter_retrying_blocks(n_queries: int, rows: int, compute: Callable[[int, int], T]) -> Iterator[T]:
    """Yield compute(start, stop) for consecutive blocks of at most `rows` queries; a block that raises
    torch.cuda.OutOfMemoryError is halved and computed again (compute must not keep partial results),
    and the smaller size is kept for the blocks after it. One row that does not fit re-raises."""
    start = 0
    while start < n_queries:
        stop = min(start + rows, n_queries)
        try:
            result = compute(start, stop)
        except torch.cuda.OutOfMemoryError:
            if stop - start == 1:
                raise
            rows = (stop - start) // 2
            LOGGER.warning("out of device memory for %d query rows; retrying with %d", stop - start, rows)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        # Outside the try: an error of whoever consumes the block is not a reason to shrink it.
        yield result
        start = stop


@contextlib.contextmanager
def full_float32_products() -> Iterator[None]:
    """Matrix products in full float32 (no TF32) within the block: TF32 rounds the inputs to 10-bit
    mantissas, which would move similarities by 1e-3 and reorder near-ties against the CPU engine."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def similarity_block(
    queries: torch.Tensor,
    gallery_t: torch.Tensor,
    exclusions: Exclusions,
    start: int,
    stop: int,
    product: Product = torch.matmul,
) -> torch.Tensor:
    """Similarities (stop - start, Ng) float32 of queries[start:stop] (on the device) to the gallery
    (its transpose, (D, Ng), on the device), excluded entries at -inf."""
    with full_float32_products():
        similarities = product(queries[start:stop], gallery_t)
    rows, cols = exclusions.pairs(start, stop)
    if rows.size:
        device = similarities.device
        similarities[torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)] = -torch.inf
    return similarities


def iter_torch_neighbour_blocks(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    exclusions: Exclusions,
    device: torch.device,
    *,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    product: Product = torch.matmul,
) -> Iterator[NeighbourBlock]:
    """The exact top-k of prepared float32 queries (Nq, D) in a gallery (Ng, D), computed on `device`
    block by block of queries; numpy NeighbourBlocks ranked as `iter_exact_neighbour_blocks` ranks."""
    queries_on_device = torch.from_numpy(np.ascontiguousarray(queries)).to(device)
    gallery_t = torch.from_numpy(np.ascontiguousarray(gallery)).to(device).T
    rows = block_rows(device, queries.shape[0], gallery.shape[0], max_memory_bytes=max_memory_bytes)

    def compute(start: int, stop: int) -> NeighbourBlock:
        similarities = similarity_block(queries_on_device, gallery_t, exclusions, start, stop, product)
        sims, ids = torch_top_k(similarities, k)
        return NeighbourBlock(start, stop, sims.cpu().numpy(), ids.cpu().numpy())

    yield from iter_retrying_blocks(queries.shape[0], rows, compute)
