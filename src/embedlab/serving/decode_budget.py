"""Bounded decode memory: a pixel budget over the uploads being decoded at once, and their own pool.

An upload's cost is known before a pixel is decoded: its header declares width x height, and Pillow
holds 1 to 4 bytes a pixel (8 while an RGBA or CMYK image is converted), so a 150 KB PNG can declare
50 megapixels. Each upload reserves its declared pixels from a `DecodeBudget` before it is decoded
and gives them back when the decode has finished (or was cancelled before it began); an upload that
does not fit beside those in flight is refused at once (`DecodeBudgetExceededError`, which the app
answers with 429 and Retry-After) instead of queueing its memory behind them. Decodes run on the
budget's own small thread pool, not on the server's 40-thread one, so a burst of small images cannot
have forty decodes in memory either.

After a large decode, the freed memory is handed back to the system with glibc's `malloc_trim`:
Pillow allocates images in 16 MiB blocks, which glibc serves from the decoding thread's arena once
its mmap threshold has grown past them, and keeps there after they are freed (8 decodes of a
50-megapixel PNG on 2 threads left 350 MB resident; `malloc_trim(0)` took it back to the baseline in
55 ms, and costs under 1 ms when there is nothing to return).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import platform
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

#: Uploads decoded at once on the budget's pool.
DEFAULT_DECODE_WORKERS = 2
#: A decode of at least this many pixels (4 MB or more of image memory) is followed by malloc_trim.
TRIM_ABOVE_PIXELS = 1_000_000
#: Seconds a client refused for the budget is told to wait (the Retry-After header).
RETRY_AFTER_S = 1

T = TypeVar("T")


class DecodeBudgetExceededError(Exception):
    """An upload whose declared pixels do not fit beside the decodes in flight."""

    def __init__(self, pixels: int, in_use: int, budget: int) -> None:
        super().__init__(
            f"the server is decoding {in_use / 1e6:.1f} megapixels of other uploads and this one declares "
            f"{pixels / 1e6:.1f}; the decode budget is {budget / 1e6:.1f} megapixels at once: "
            f"retry in {RETRY_AFTER_S} s"
        )
        self.pixels = pixels
        self.in_use = in_use
        self.budget = budget


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def release_freed_memory() -> None:
    """Hand memory that malloc holds free back to the system (glibc's malloc_trim(0)); a no-op
    elsewhere."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class DecodeBudget:
    """At most `budget_pixels` declared pixels decoding at once, on `workers` threads of its own.

    `run(pixels, fn, *args)` reserves `pixels` (or raises DecodeBudgetExceededError), runs
    `fn(*args)` on the pool and returns its result; the reservation is released when `fn` has
    returned or raised, or when it was cancelled before starting, never while it still runs. A single
    upload may reserve up to the whole budget, so the budget must be at least the largest image the
    server decodes.
    """

    def __init__(self, budget_pixels: int, workers: int = DEFAULT_DECODE_WORKERS) -> None:
        if budget_pixels < 1:
            raise ValueError(f"the decode budget must be at least 1 pixel, got {budget_pixels}")
        if workers < 1:
            raise ValueError(f"the decode pool needs at least 1 worker, got {workers}")
        self.budget_pixels = budget_pixels
        self.workers = workers
        self._in_use = 0
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def in_use(self) -> int:
        """Pixels reserved by the decodes queued or running now."""
        return self._in_use

    def reserve(self, pixels: int) -> None:
        """Take `pixels` from the budget, or raise DecodeBudgetExceededError if they do not fit."""
        with self._lock:
            if pixels > 0 and self._in_use + pixels > self.budget_pixels:
                raise DecodeBudgetExceededError(pixels, self._in_use, self.budget_pixels)
            self._in_use += pixels

    def release(self, pixels: int) -> None:
        with self._lock:
            assert self._in_use >= pixels, (self._in_use, pixels)
            self._in_use -= pixels

    async def run(self, pixels: int, fn: Callable[..., T], *args: object) -> T:
        """fn(*args) on the pool, within the budget (see the class docstring)."""
        self.reserve(pixels)
        try:
            future = self._executor().submit(self._decode, pixels, fn, *args)
        except BaseException:
            self.release(pixels)
            raise
        # Done callbacks also run when the future is cancelled before it starts (asyncio cancels it
        # when the request is), so the pixels come back exactly once, after the work is over.
        future.add_done_callback(lambda _: self.release(pixels))
        return await asyncio.wrap_future(future)

    @staticmethod
    def _decode(pixels: int, fn: Callable[..., T], *args: object) -> T:
        try:
            return fn(*args)
        finally:
            # The decoded image is garbage by now (fn returns the small resized array): return the
            # arena memory it occupied.
            if pixels >= TRIM_ABOVE_PIXELS:
                release_freed_memory()

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="embedlab-decode")
        return self._pool

    def shutdown(self) -> None:
        """Stop the pool: queued decodes are cancelled (and released), running ones finish first."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
