"""Ranks of each query's positives in its row of similarities: one compiled pass per row.

The rank rule is METRICS.md's: similarity descending, ties broken by gallery index ascending, so the
rank of gallery item p in a row s is 1 + #{j: s_j > s_p} + #{j < p: s_j == s_p}.

Per row, with d the depth the metrics need:
1. A bound below the d-th best similarity is read off a strided sample of the row (an order statistic
   of the sample, with a margin of three standard deviations of the count it estimates).
2. One pass over the row collects the candidates, the items at least as similar as the bound, in
   gallery order: 64 comparisons make a bit mask, and only its set bits cost a step. In the rare row
   where they are fewer than d, every non-excluded item is taken.
3. Each candidate gets a 32-bit integer key that sorts ascending as the similarity sorts descending
   (-0.0 first turned into 0.0, since the two compare equal); the collecting pass also counts the
   keys' radix digits. A stable radix sort by key then puts the candidates in exact rank order, ties
   included, without ever comparing indices: rank = position + 1. Every item that ranks above a
   candidate is itself a candidate, so these are the whole-row ranks.
4. The positives up to the d-th candidate, and those tied with it, are the row's ranks. Excluded
   items (-inf) are never candidates and never get a rank.
5. Optionally (for `mrr`), a row whose positives all lie below the d-th item gets its best positive's
   rank by counting over the whole row.

Each row costs one pass over its similarities plus a sort of its candidates (about d of them), with
scratch of about 16 bytes per gallery item per thread. The kernel releases the GIL, so row ranges run in
parallel on `parallel_rows` threads, handed out a few at a time to whichever thread is free.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

from embedlab.retrieval.threads import parallel_rows

# Radix digits of 8 bits: 256 buckets.
_DIGIT_BITS = 8
_BUCKETS = 1 << _DIGIT_BITS
_DIGIT_MASK = _BUCKETS - 1
# The key of -inf, the largest key of any non-NaN float32: excluded items.
_EXCLUDED_KEY = 0xFF800000
# Below this many candidates, an insertion sort beats four radix passes over 256 buckets.
_INSERTION_SORT_SIZE = 32
# Candidates are listed by int32 gallery index.
_MAX_GALLERY = 1 << 31
# Similarities compared per bit mask in the collecting pass.
_SCAN_WIDTH = 64


@njit(nogil=True, cache=True)
def _key(bits: np.uint32) -> int:
    """Order key of a float32 given by its bit pattern: larger similarity, smaller key; -0.0 == 0.0."""
    u = np.int64(bits)
    if u == 0x80000000:
        u = 0
    # Non-negative floats: flip the magnitude bits so larger sorts first; negative ones already do.
    return u ^ (((u >> 31) - 1) & 0x7FFFFFFF)


def _sample_stride(n_gallery: int, depth: int) -> int:
    """Stride of the sample that bounds a row's depth-th best similarity (1 where depth covers the row).

    Sampling every s-th item costs about n / s selection steps; the bound it yields lets through about
    depth + 3 * sqrt(depth * s) + s candidates, each costing about as much to sort (measured: ~5 ns
    each). The cheapest power of two wins.
    """
    if depth >= n_gallery:
        return 1

    def cost(stride: int) -> float:
        return n_gallery / stride + 3.0 * math.sqrt(depth * stride) + stride

    strides = [1 << p for p in range(max(1, n_gallery.bit_length() - 1))]
    return min(strides, key=cost)


@njit(nogil=True, cache=True)
def _partition(
    source: np.ndarray, target: np.ndarray, lo: int, hi: int, pivot: np.float32, inclusive: bool
) -> int:
    """Copy source[lo:hi] into target[lo:hi], the values below the pivot (or equal to it, if inclusive)
    first; return how many those are."""
    left, right = lo, hi - 1
    # Branch-free: each value is written at both ends, and only the end it belongs to advances.
    for i in range(lo, hi):
        value = source[i]
        target[left] = value
        target[right] = value
        below = value <= pivot if inclusive else value < pivot
        left += below
        right -= 1 - below
    return left - lo


@njit(nogil=True, cache=True)
def _select(values: np.ndarray, spare: np.ndarray, size: int, k: int) -> np.float32:
    """The k-th smallest (0-based) of values[:size]: quickselect with median-of-3 pivots, using spare
    (as large) as scratch; both arrays are overwritten."""
    source, target = values, spare
    lo, hi = 0, size
    while hi - lo > 1:
        first, middle, last = source[lo], source[(lo + hi) // 2], source[hi - 1]
        pivot = max(min(first, middle), min(max(first, middle), last))
        below = _partition(source, target, lo, hi, pivot, False)
        if below == 0:
            # The pivot is the smallest value: set its copies apart (NaN, equal to nothing, stops here).
            below = _partition(source, target, lo, hi, pivot, True)
            if k < lo + below or below == 0:
                return pivot
            lo += below
        elif k < lo + below:
            hi = lo + below
        else:
            lo += below
        source, target = target, source
    return source[lo]


@njit(nogil=True, cache=True)
def _bound(row: np.ndarray, depth: int, stride: int, sample: np.ndarray, spare: np.ndarray) -> np.float32:
    """A similarity that probably at least `depth` items of the row reach, from every stride-th item."""
    size = 0
    for j in range(0, row.size, stride):
        sample[size] = row[j]
        size += 1
    expected = depth / stride
    need = min(size, int(expected + 3.0 * math.sqrt(expected)) + 1)
    return _select(sample, spare, size, size - need)


@njit(nogil=True, cache=True)
def _add_item(
    j: int,
    bits: np.ndarray,
    gallery_codes: np.ndarray,
    code: int,
    items: np.ndarray,
    m: int,
    counts: np.ndarray,
) -> int:
    """Write gallery item j as items[m], packed (key << 1) | is_positive, and count its radix digits;
    return m + 1, or m when the item is excluded (it is then overwritten by the next one)."""
    key = _key(bits[j])
    item = (key << 1) | (gallery_codes[j] == code)
    kept = key < _EXCLUDED_KEY
    items[m] = item
    counts[0, (item >> 1) & _DIGIT_MASK] += kept
    counts[1, (item >> 9) & _DIGIT_MASK] += kept
    counts[2, (item >> 17) & _DIGIT_MASK] += kept
    counts[3, (item >> 25) & _DIGIT_MASK] += kept
    return m + kept


@njit(nogil=True, cache=True)
def _collect_above(
    row: np.ndarray,
    bits: np.ndarray,
    bound: np.float32,
    gallery_codes: np.ndarray,
    code: int,
    items: np.ndarray,
    counts: np.ndarray,
) -> int:
    """Write the non-excluded items at least as similar as `bound` into items[:m], in gallery order, and
    return m; counts[level, digit] counts their radix digits for `_sort_by_key`."""
    counts[:] = 0
    m = 0
    n = row.size
    whole = n - n % _SCAN_WIDTH
    # A bit mask of each 64 comparisons, then one step per set bit: 1.3x faster, measured, than a
    # per-item loop whose store address depends on the previous comparison.
    for base in range(0, whole, _SCAN_WIDTH):
        mask = np.uint64(0)
        for k in range(_SCAN_WIDTH):
            mask |= np.uint64(row[base + k] >= bound) << np.uint64(k)
        while mask:
            m = _add_item(base + trailing_zeros(mask), bits, gallery_codes, code, items, m, counts)
            mask &= mask - np.uint64(1)
    for j in range(whole, n):
        if row[j] >= bound:
            m = _add_item(j, bits, gallery_codes, code, items, m, counts)
    return m


@njit(nogil=True, cache=True)
def _collect_all(
    bits: np.ndarray, gallery_codes: np.ndarray, code: int, items: np.ndarray, counts: np.ndarray
) -> int:
    """`_collect_above` with no bound: every non-excluded item."""
    counts[:] = 0
    m = 0
    for j in range(bits.size):
        m = _add_item(j, bits, gallery_codes, code, items, m, counts)
    return m


@njit(nogil=True, cache=True)
def _sort_by_key(items: np.ndarray, spare: np.ndarray, m: int, counts: np.ndarray) -> np.ndarray:
    """Stable sort of items[:m] by key (bits 1..32); returns whichever buffer holds the result.
    counts[level, digit]: how many items have each digit, as the collecting pass counted them.

    Stability keeps equal keys in gallery order, which is the tie rule.
    """
    if m <= _INSERTION_SORT_SIZE:
        for i in range(1, m):
            item = items[i]
            key = item >> 1
            j = i - 1
            while j >= 0 and items[j] >> 1 > key:
                items[j + 1] = items[j]
                j -= 1
            items[j + 1] = item
        return items
    # LSD radix sort on four 8-bit digits. (Digits of 11 bits, three passes, measured twice as slow:
    # scattering into 2,048 buckets thrashes the L1 cache.)
    source, target = items, spare
    for level in range(4):
        shift = 1 + _DIGIT_BITS * level
        level_counts = counts[level]
        # Candidates near a threshold often share their high digits: a digit they all share moves nothing.
        if level_counts[(source[0] >> shift) & _DIGIT_MASK] == m:
            continue
        total = 0
        for bucket in range(_BUCKETS):
            size = level_counts[bucket]
            level_counts[bucket] = total
            total += size
        for i in range(m):
            item = source[i]
            digit = (item >> shift) & _DIGIT_MASK
            target[level_counts[digit]] = item
            level_counts[digit] += 1
        source, target = target, source
    return source


@njit(nogil=True, cache=True)
def _first_positive_rank(row: np.ndarray, bits: np.ndarray, members: np.ndarray) -> int:
    """Rank of the best non-excluded item of `members` (ascending gallery indices), by counting over the
    whole row; 0 if every member is excluded."""
    best_key = _EXCLUDED_KEY
    best = -1
    for j in members:
        key = _key(bits[j])
        if key < best_key:
            best_key, best = key, j
    if best < 0:
        return 0
    value = row[best]
    rank = 1
    for j in range(row.size):
        rank += row[j] > value
    for j in range(best):
        rank += row[j] == value
    return rank


@njit(nogil=True, cache=True)
def _rank_rows(
    similarities: np.ndarray,
    bits: np.ndarray,
    query_codes: np.ndarray,
    gallery_codes: np.ndarray,
    class_offsets: np.ndarray,
    class_members: np.ndarray,
    depth: int,
    stride: int,
    first_beyond_depth: bool,
    ranks: np.ndarray,
    found: np.ndarray,
) -> None:
    """Kernel of `positive_ranks`: writes row i's ranks ascending into ranks[i, :found[i]] and leaves
    the rest of `ranks` untouched. bits: the similarities' float32 bit patterns (a uint32 view)."""
    n_rows, n = similarities.shape
    items = np.empty(n, dtype=np.int64)
    spare = np.empty(n, dtype=np.int64)
    counts = np.empty((4, _BUCKETS), dtype=np.int32)
    sample = np.empty(n // stride + 1, dtype=np.float32)
    sample_spare = np.empty_like(sample)
    for row in range(n_rows):
        found[row] = 0
        code = query_codes[row]
        if code < 0:
            continue
        values, keys = similarities[row], bits[row]
        m = 0
        if depth < n:
            bound = _bound(values, depth, stride, sample, sample_spare)
            m = _collect_above(values, keys, bound, gallery_codes, code, items, counts)
        if m < depth:
            m = _collect_all(keys, gallery_codes, code, items, counts)
        ordered = _sort_by_key(items, spare, m, counts)
        # Past the depth-th candidate, only items tied with it still count.
        threshold = ordered[depth - 1] >> 1 if m > depth else _EXCLUDED_KEY
        count = 0
        # Branch-free: every rank is written, and only a positive's slot is kept (hence one spare slot).
        for position in range(m):
            item = ordered[position]
            if item >> 1 > threshold:
                break
            ranks[row, count] = position + 1
            count += item & 1
        if count == 0 and first_beyond_depth:
            rank = _first_positive_rank(
                values, keys, class_members[class_offsets[code] : class_offsets[code + 1]]
            )
            if rank:
                ranks[row, 0] = rank
                count = 1
        found[row] = count


def load_kernel() -> None:
    """Load the compiled kernel now (from numba's cache, or compiling it) by ranking one tiny row."""
    positive_ranks(
        np.zeros((1, 2), dtype=np.float32),
        np.zeros(1, dtype=np.int64),
        np.zeros(2, dtype=np.int64),
        np.array([0, 2], dtype=np.int64),
        np.arange(2, dtype=np.int64),
        1,
        first_beyond_depth=False,
        num_threads=1,
    )


def positive_ranks(
    similarities: np.ndarray,
    query_codes: np.ndarray,
    gallery_codes: np.ndarray,
    class_offsets: np.ndarray,
    class_members: np.ndarray,
    depth: int,
    *,
    first_beyond_depth: bool,
    num_threads: int,
) -> np.ndarray:
    """Padded ranks (rows, M) float64 of the positives in each row of a similarity block.

    similarities: (rows, Ng) float32, excluded items at -inf. query_codes (rows,) and gallery_codes
    (Ng,): int64 label codes in [0, C), plus -1 for a query without positives; a gallery item is a
    positive of a row when the codes are equal. class_members[class_offsets[c]:class_offsets[c + 1]]:
    the gallery indices of code c, ascending (class_offsets has C + 1 entries).

    Each row lists, ascending, the ranks of its non-excluded positives at least as similar as its
    depth-th best non-excluded item (so positives tied with that item count even past the depth); with
    first_beyond_depth, a row with none of those but some non-excluded positive lists the rank of its
    best positive instead. M is the longest list (at least 1); shorter rows are padded with inf. Rows
    are split over `num_threads` threads.
    """
    n_rows, n_gallery = similarities.shape
    if n_gallery >= _MAX_GALLERY:
        raise ValueError(f"the gallery has {n_gallery} items; ranking supports fewer than {_MAX_GALLERY}.")
    assert similarities.dtype == np.float32 and depth >= 1
    similarities = np.ascontiguousarray(similarities)
    bits = similarities.view(np.uint32)
    query_codes = np.ascontiguousarray(query_codes, dtype=np.int64)
    labelled = query_codes[query_codes >= 0]
    # A row lists at most its class's size, plus the kernel's spare slot; the pages of `ranks` past a
    # row's list are never touched.
    width = max(1, int(np.diff(class_offsets)[labelled].max(initial=0)))
    ranks = np.empty((n_rows, width + 1))
    found = np.empty(n_rows, dtype=np.int64)
    stride = _sample_stride(n_gallery, depth)

    def work(_part: int, lo: int, hi: int) -> None:
        _rank_rows(
            similarities[lo:hi],
            bits[lo:hi],
            query_codes[lo:hi],
            gallery_codes,
            class_offsets,
            class_members,
            depth,
            stride,
            first_beyond_depth,
            ranks[lo:hi],
            found[lo:hi],
        )

    parallel_rows(work, n_rows, num_threads, chunks_per_thread=8)
    width = max(1, int(found.max(initial=0)))
    padded = ranks[:, :width]
    padded[np.arange(width) >= found[:, None]] = np.inf
    return padded
