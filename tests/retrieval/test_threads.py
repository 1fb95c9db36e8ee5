"""parallel_rows: every row to one call, one call per part at a time, errors passed on, nesting."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from embedlab.retrieval.threads import parallel_rows


@pytest.mark.parametrize(("n_rows", "chunks_per_thread"), [(100, 1), (100, 3), (100, 8), (5, 8), (1, 4)])
def test_parallel_rows_gives_each_row_to_one_call_and_each_part_one_call_at_a_time(
    n_rows: int, chunks_per_thread: int
) -> None:
    calls = np.zeros(n_rows, dtype=int)
    busy: set[int] = set()
    lock = threading.Lock()

    def work(part: int, lo: int, hi: int) -> None:
        with lock:
            assert part in (0, 1) and part not in busy and lo < hi
            busy.add(part)
            calls[lo:hi] += 1
        time.sleep(0.001)
        with lock:
            busy.remove(part)

    parallel_rows(work, n_rows, 2, chunks_per_thread=chunks_per_thread)
    np.testing.assert_array_equal(calls, 1)


def test_parallel_rows_passes_on_an_error_and_can_be_nested() -> None:
    def failing(part: int, lo: int, hi: int) -> None:
        if lo <= 50 < hi:
            raise ValueError("row 50")

    with pytest.raises(ValueError, match="row 50"):
        parallel_rows(failing, 100, 2, chunks_per_thread=4)

    calls = np.zeros((10, 10), dtype=int)

    def outer(part: int, lo: int, hi: int) -> None:
        for row in range(lo, hi):

            def inner(_part: int, first: int, last: int, row: int = row) -> None:
                calls[row, first:last] += 1

            parallel_rows(inner, 10, 2, chunks_per_thread=2)

    # On a thread of its own, so that a deadlock fails the test instead of hanging it.
    runner = threading.Thread(target=parallel_rows, args=(outer, 10, 2), kwargs={"chunks_per_thread": 2})
    runner.start()
    runner.join(timeout=60)
    assert not runner.is_alive(), "nested parallel_rows calls deadlocked"
    np.testing.assert_array_equal(calls, 1)
