"""Threads for row-parallel numpy work, and the BLAS thread limit of the similarity product."""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np


def default_num_threads() -> int:
    """Threads used for the selection step: the CPUs this process may run on."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def parallel_rows(
    work: Callable[[int, int, int], None], n_rows: int, num_threads: int, *, chunks_per_thread: int = 1
) -> None:
    """Run work(part, lo, hi) over contiguous row ranges covering [0, n_rows) on up to num_threads threads.

    numpy releases the GIL in partition, sort and searchsorted, so row ranges run truly in parallel;
    `part` (0 .. threads - 1) names the calling thread, so that each can use its own Workspace buffers.
    With chunks_per_thread > 1 the rows are cut into that many ranges per thread, handed out in turn to
    whichever thread is free: on a shared machine one thread is often held up, and the other then takes
    over its rows instead of waiting for it.

    The calling thread works as part 0, beside long-lived helper threads: starting fresh threads for
    each call took about 3 ms a call in a profile of a 50,000-query evaluation on the shared two-core
    machine (0.45 s in all), and a caller that works itself finishes even when the helpers are busy
    elsewhere or when work itself calls parallel_rows.
    """
    n_parts = max(1, min(num_threads, n_rows))
    if n_parts == 1:
        work(0, 0, n_rows)
        return
    bounds = np.linspace(0, n_rows, min(n_rows, n_parts * chunks_per_thread) + 1).astype(int)
    ranges = iter(list(itertools.pairwise(bounds)))

    # next() on a list iterator is atomic under the GIL: each range goes to exactly one thread.
    def run(part: int) -> None:
        for lo, hi in ranges:
            work(part, int(lo), int(hi))

    helpers = [_helper_threads().submit(run, part) for part in range(1, n_parts)]
    try:
        run(0)
    finally:
        # A helper that has not started has nothing left to do (and may be queued behind this very
        # thread, when work itself calls parallel_rows); one that has may still be writing into the
        # caller's arrays: wait for it, even after an error.
        started = [helper for helper in helpers if not helper.cancel()]
        wait(started)
    for helper in started:
        helper.result()


@functools.cache
def _helper_threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=max(1, default_num_threads() - 1), thread_name_prefix="embedlab-rows"
    )


# A forked child inherits the executor but not its threads: it makes its own.
os.register_at_fork(after_in_child=_helper_threads.cache_clear)


def threaded_product(left: np.ndarray, right: np.ndarray, out: np.ndarray, num_threads: int) -> None:
    """out = left @ right, row ranges of `left` in our own threads, each on a single-threaded BLAS.

    BLAS's own worker threads keep spinning after a product returns, and slowed whatever ranked the
    block next on two cores by 1.7x (141 against 80 us per row of 50,000 in the ranking kernel), for the
    same product speed.
    """

    def rows(_part: int, lo: int, hi: int) -> None:
        np.matmul(left[lo:hi], right, out=out[lo:hi])

    with _blas_controller().limit(limits=1, user_api="blas"):
        parallel_rows(rows, left.shape[0], num_threads)


@functools.cache
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()
