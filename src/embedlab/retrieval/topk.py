"""Top-k selection by the METRICS.md ranking: similarity descending, ties by gallery index ascending."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from embedlab.retrieval.threads import default_num_threads, parallel_rows


@dataclass(frozen=True)
class NeighbourBlock:
    """Top-k neighbours of queries[start:stop]: similarities (rows, k) float32, indices (rows, k) int64.

    Rows are ranked by the METRICS.md rule; where fewer than k items remain after exclusions the tail
    holds index -1 and similarity -inf.
    """

    start: int
    stop: int
    similarities: np.ndarray
    indices: np.ndarray


def _decode_indices(keys: np.ndarray) -> np.ndarray:
    return keys & 0xFFFFFFFF


class Workspace:
    """Scratch arrays reused from one block of queries to the next.

    A fresh array of hundreds of megabytes costs a page fault per 4 KiB on first touch, which on this
    project's virtual machine took longer than the partition it was allocated for; reusing avoids that.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, str], np.ndarray] = {}

    def array(self, part: int, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """An uninitialised array of this shape and dtype, backed by the (part, name) buffer."""
        size = math.prod(shape)
        buffer = self._buffers.get((part, name))
        if buffer is None or buffer.size < size or buffer.dtype != np.dtype(dtype):
            buffer = np.zeros(size, dtype=dtype)
            # Touch every page now with a plain fill: a copy into untouched pages measured 50x slower.
            buffer.fill(0)
            self._buffers[(part, name)] = buffer
        return buffer[:size].reshape(shape)


def ordered_keys(similarities: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """int64 keys whose ascending order is the METRICS.md ranking: similarity desc, then index asc.

    similarities: float32, any shape; indices: int64 in [0, 2**32), same shape. The float32 bit pattern is
    mapped to an int32 that sorts like the float (after +0.0 turns -0.0 into 0.0, so the two zeros tie).
    """
    bits = (np.asarray(similarities, dtype=np.float32) + np.float32(0.0)).view(np.int32)
    ordered = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))
    # |ordered| < 2**31 for every non-NaN float, so the shifted key stays inside int64.
    return (-(ordered.astype(np.int64)) << 32) | indices


def _trim_ties(flat: np.ndarray, block: np.ndarray, threshold: np.ndarray, kk: int) -> np.ndarray:
    """Keep exactly kk candidates per row: where more items than fit tie at a row's threshold value,
    the tied ones with the lowest gallery indices stay (METRICS.md tie rule).

    flat: ascending flat positions in block (rows, m) of the items >= their row's threshold.
    """
    n_rows, m = block.shape
    counts = np.bincount(flat // m, minlength=n_rows)
    over = np.flatnonzero(counts > kk)
    if over.size == 0:
        return flat
    ends = np.cumsum(counts)
    keep = np.ones(flat.size, dtype=bool)
    for row in over:
        first = ends[row] - counts[row]
        tied = first + np.flatnonzero(block.ravel()[flat[first : ends[row]]] == threshold[row])
        # flat is ascending, so the last tied entries of the row have the highest indices.
        keep[tied[tied.size - (counts[row] - kk) :]] = False
    return flat[keep]


def top_k_indices(
    similarities: np.ndarray,
    k: int,
    *,
    num_threads: int | None = None,
    workspace: Workspace | None = None,
) -> np.ndarray:
    """Indices (n, min(k, m)) int64 of the best items of each row of a (n, m) float32 similarity block.

    Ranked by the METRICS.md rule (similarity descending, gallery index ascending); excluded items
    (-inf) come last and are reported as -1.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    similarities = np.ascontiguousarray(similarities, dtype=np.float32)
    n, m = similarities.shape
    kk = min(k, m)
    out = np.empty((n, kk), dtype=np.int64)
    if n == 0 or kk == 0:
        return out
    space = workspace or Workspace()

    def work(part: int, lo: int, hi: int) -> None:
        block = similarities[lo:hi]
        n_rows = hi - lo
        if kk < m:
            # The items at least as similar as the kk-th best; ties at that value may add more, and
            # _trim_ties keeps the lowest-indexed of those.
            scratch = space.array(part, "partition", block.shape, np.float32)
            np.copyto(scratch, block)
            scratch.partition(m - kk, axis=1)
            threshold = scratch[:, m - kk].copy()
            mask = space.array(part, "mask", block.shape, np.bool_)
            np.greater_equal(block, threshold[:, None], out=mask)
            flat = _trim_ties(np.flatnonzero(mask), block, threshold, kk)
        else:
            flat = np.arange(n_rows * m, dtype=np.int64)
        row_keys = ordered_keys(block.ravel()[flat], flat % m).reshape(n_rows, kk)
        row_keys.sort(axis=1)
        indices = _decode_indices(row_keys)
        indices[np.take_along_axis(block, indices, axis=1) == -np.inf] = -1
        out[lo:hi] = indices

    parallel_rows(work, n, num_threads or default_num_threads())
    return out


def top_k(
    similarities: np.ndarray,
    k: int,
    *,
    num_threads: int | None = None,
    workspace: Workspace | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best gallery items of each row of a similarity block, ranked by the METRICS.md tie rule.

    similarities: (n, m) float32 with -inf for excluded items. Returns similarities (n, k) float32 and
    indices (n, k) int64; where a row has fewer than k non-excluded items the tail is (-inf, -1).
    """
    found = top_k_indices(similarities, k, num_threads=num_threads, workspace=workspace)
    n, kk = found.shape
    indices = np.full((n, k), -1, dtype=np.int64)
    indices[:, :kk] = found
    sims = np.full((n, k), -np.inf, dtype=np.float32)
    sims[:, :kk] = np.take_along_axis(np.asarray(similarities), np.maximum(found, 0), axis=1)
    sims[indices < 0] = -np.inf
    return sims, indices


# The index of an empty slot in `merge_top_k`'s keys: above every gallery index, so it ranks last.
_EMPTY_SLOT_INDEX = 0xFFFFFFFF


def merge_top_k(
    first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of two candidate lists of each row, ranked by the METRICS.md rule over their ids.

    first, second: (similarities float32, ids int64) of shapes (n, a) and (n, b), ids in [0, 2**32 - 1)
    with -1 (similarity -inf) for an empty slot; an id appears in one list at most. Returns
    similarities (n, min(k, a + b)) float32 and ids int64, empty slots last.
    """
    sims = np.concatenate([first[0], second[0]], axis=1)
    ids = np.concatenate([first[1], second[1]], axis=1)
    keys = ordered_keys(sims, np.where(ids < 0, _EMPTY_SLOT_INDEX, ids))
    order = np.argsort(keys, axis=1)[:, :k]
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)
