"""Batched search: concurrent requests share forward passes and get what a direct search gives."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from embedlab.index.search import open_searcher
from embedlab.serving.batching import BatchedSearch


def test_concurrent_searches_are_batched_and_answered_like_direct_ones(deployment) -> None:
    searcher = open_searcher(deployment.index_dir)
    files = sorted(deployment.gallery.rglob("*.png"))[:12]
    pixels = [searcher.decode(path.read_bytes(), str(path)) for path in files]
    ks = [1 + n % 5 for n in range(len(files))]
    batch_sizes: list[int] = []
    direct_search = searcher.search

    def counting_search(images: np.ndarray, k: int):
        batch_sizes.append(len(images))
        return direct_search(images, k)

    searcher.search = counting_search  # type: ignore[method-assign]

    async def run() -> list:
        batched = BatchedSearch(searcher, max_batch=8)
        await batched.start()
        try:
            return await asyncio.gather(*(batched.search(p, k) for p, k in zip(pixels, ks, strict=True)))
        finally:
            await batched.stop()

    results = asyncio.run(run())
    # all twelve were queued before the worker ran: one batch of eight, then the remaining four
    assert batch_sizes == [8, 4]
    for image, k, result in zip(pixels, ks, results, strict=True):
        (expected,) = direct_search(image[None], k)
        assert [hit.id for hit in result.hits] == [hit.id for hit in expected.hits]
        assert [hit.score for hit in result.hits] == pytest.approx(
            [hit.score for hit in expected.hits], abs=1e-6
        )
        assert result.new_identity == expected.new_identity


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on(deployment) -> None:
    searcher = open_searcher(deployment.index_dir)
    image = searcher.decode((deployment.gallery / "whale_a" / "0.png").read_bytes(), "q")
    calls = []
    direct_search = searcher.search

    def flaky_search(images: np.ndarray, k: int):
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return direct_search(images, k)

    searcher.search = flaky_search  # type: ignore[method-assign]

    async def run() -> str:
        batched = BatchedSearch(searcher)
        await batched.start()
        try:
            with pytest.raises(RuntimeError, match="out of memory"):
                await batched.search(image, 3)
            return (await batched.search(image, 3)).hits[0].label
        finally:
            await batched.stop()

    assert asyncio.run(run()) == "whale_a"


def test_max_batch_must_be_positive(deployment) -> None:
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        BatchedSearch(open_searcher(deployment.index_dir), max_batch=0)
