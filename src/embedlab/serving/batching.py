"""Concurrent searches answered together: one forward pass per batch of waiting queries.

A forward pass of one image costs nearly as much as one of several (the model's per-call overhead
dominates at small sizes), and on a few cores many threads each running their own pass mostly fight
over the GIL and the caches. So requests queue their decoded pixels, and one worker takes everything
that is waiting (up to max_batch), embeds and searches it in a single call on a worker thread, and
answers each request. Nothing waits for a batch to fill: at low load a batch is one image, and under
load the queue fills by itself while the previous batch computes.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, replace

import anyio
import numpy as np

from embedlab.index.search import QueryResult, SearcherSource

DEFAULT_MAX_BATCH = 32


@dataclass
class _Pending:
    pixels: np.ndarray
    k: int
    future: asyncio.Future[QueryResult]


class BatchedSearch:
    """Queue searches from any number of concurrent requests; `start` runs the worker in the current
    event loop, `stop` ends it."""

    def __init__(self, searcher: SearcherSource, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.searcher = searcher
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._work())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def search(self, pixels: np.ndarray, k: int) -> QueryResult:
        """Top-k and the open-set decision of one uint8 image (C, S, S)."""
        if self._queue is None:
            raise RuntimeError("BatchedSearch.start() has not been awaited")
        future: asyncio.Future[QueryResult] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(pixels, k, future))
        return await future

    def _run(self, batch: list[_Pending]) -> list[QueryResult]:
        """Embed and search a batch (on a worker thread) with the current searcher, which a reloading one
        looks up here, off the event loop: the deepest k asked for, cut per request."""
        searcher = self.searcher.current()
        results = searcher.search(np.stack([p.pixels for p in batch]), max(p.k for p in batch))
        return [replace(r, hits=r.hits[: p.k]) for p, r in zip(batch, results, strict=True)]

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # A request whose client went away has its future cancelled: no need to compute it.
            batch = [p for p in batch if not p.future.done()]
            if not batch:
                continue
            try:
                results = await anyio.to_thread.run_sync(self._run, batch)
            except Exception as error:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)
