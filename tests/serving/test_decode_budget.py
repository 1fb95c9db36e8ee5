"""The decode budget: reservations of declared pixels, refused beyond the budget, given back exactly once
when the work is over (finished, failed or cancelled before it began), on a pool of its own."""

from __future__ import annotations

import asyncio
import threading

import pytest

from embedlab.serving.decode_budget import DecodeBudget, DecodeBudgetExceededError, release_freed_memory


def test_reservations_beyond_the_budget_are_refused_with_the_numbers() -> None:
    budget = DecodeBudget(100_000_000)
    budget.reserve(60_000_000)
    budget.reserve(40_000_000)  # exactly full
    with pytest.raises(DecodeBudgetExceededError) as caught:
        budget.reserve(1_000_000)
    assert str(caught.value) == (
        "the server is decoding 100.0 megapixels of other uploads and this one declares 1.0; the decode "
        "budget is 100.0 megapixels at once: retry in 1 s"
    )
    assert budget.in_use == 100_000_000
    budget.reserve(0)  # costs nothing: an image refused from its header
    budget.release(60_000_000)
    budget.reserve(50_000_000)
    assert budget.in_use == 90_000_000


@pytest.mark.parametrize(("pixels", "workers", "words"), [(0, 2, "at least 1 pixel"), (10, 0, "1 worker")])
def test_a_budget_without_room_or_workers_is_refused(pixels: int, workers: int, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        DecodeBudget(pixels, workers)


def test_work_runs_on_the_pool_and_gives_its_pixels_back_when_done_or_failed() -> None:
    budget = DecodeBudget(10, workers=1)

    def work(value: int) -> tuple[int, int, str]:
        return value, budget.in_use, threading.current_thread().name

    def broken() -> None:
        raise RuntimeError("corrupt")

    async def main() -> None:
        value, in_use, thread = await budget.run(7, work, 3)
        assert (value, in_use) == (3, 7) and thread.startswith("embedlab-decode")
        assert budget.in_use == 0
        with pytest.raises(RuntimeError, match="corrupt"):
            await budget.run(10, broken)
        assert budget.in_use == 0

    try:
        asyncio.run(main())
    finally:
        budget.shutdown()


def test_a_cancelled_request_gives_its_pixels_back_once_its_decode_is_over() -> None:
    """One worker, busy: the second upload waits in the pool's queue; cancelling it releases its
    pixels at once, while the running one keeps its own until it returns."""
    budget = DecodeBudget(10, workers=1)
    started, finish = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        finish.wait(10)
        return "done"

    async def main() -> None:
        running = asyncio.ensure_future(budget.run(6, slow))
        await asyncio.to_thread(started.wait, 10)
        queued = asyncio.ensure_future(budget.run(4, slow))
        await asyncio.sleep(0)
        assert budget.in_use == 10
        with pytest.raises(DecodeBudgetExceededError):
            await budget.run(1, slow)
        queued.cancel()
        running.cancel()  # the client went away, but the decode is running: its memory is still held
        await asyncio.gather(queued, running, return_exceptions=True)
        assert budget.in_use == 6
        finish.set()
        for _ in range(1000):
            if budget.in_use == 0:
                break
            await asyncio.sleep(0.01)
        assert budget.in_use == 0

    try:
        asyncio.run(main())
    finally:
        finish.set()
        budget.shutdown()


def test_freed_memory_can_be_released_on_any_platform() -> None:
    release_freed_memory()  # malloc_trim(0) on glibc, nothing elsewhere
