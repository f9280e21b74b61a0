"""Dynamic batching that forms the next batch when the scorer is free.

Ray Serve's `@serve.batch` (since batches may run concurrently, ray-project/ray#53096) seals a
batch `batch_wait_timeout_s` after its first request even while the previous batch is still
running, and the sealed batch then waits for the scorer. Requests that arrive while a batch
runs are spread over small batches sealed one after another: measured on the service under
16 concurrent clients, 3.0 notes per batch with `max_batch_size` 8, and the scorer needs
about 1.7x the CPU per note at batch 1 that it needs at batch 8 (`bench/service.py`).

Here the worker takes the next batch only after the current one returns: everything that
waited meanwhile (up to `max_batch_size`) goes into it at once, and only when fewer are
waiting does it wait up to `wait_timeout_s` for more. At low load a request waits at most
the timeout; at saturation batches are full.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

BatchHandler = Callable[[list[Item]], Awaitable[Sequence[Result]]]


class DynamicBatcher(Generic[Item, Result]):
    """`await batcher.submit(item)` returns the handler's result for that item; the handler
    is called with at most `max_batch_size` items at a time, one call at a time."""

    def __init__(self, handler: BatchHandler, max_batch_size: int = 8, wait_timeout_s: float = 0.01):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.handler = handler
        self.max_batch_size, self.wait_timeout_s = max_batch_size, max(0.0, wait_timeout_s)
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future]] | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = self._queue or asyncio.Queue()
            self._worker = loop.create_task(self._run())
        future: asyncio.Future = loop.create_future()
        await self._queue.put((item, future))
        return await future

    async def _next_batch(self) -> list[tuple[Item, asyncio.Future]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.wait_timeout_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        # a caller that went away (client disconnect) is not scored
        return [(item, future) for item, future in batch if not future.done()]

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                results = await self.handler([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch handler returned {len(results)} results for {len(batch)} items")
            except Exception as exc:  # every caller of the failed batch gets the error; the worker goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
