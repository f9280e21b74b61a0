"""DynamicBatcher: the next batch is formed when the handler is free, so requests that wait
during a batch go together into the next one (Ray Serve's @serve.batch sealed them early)."""

from __future__ import annotations

import asyncio

import pytest

from serving.batching import DynamicBatcher


class RecordingHandler:
    """Returns 10x each item; the first call blocks until released, so others queue meanwhile."""

    def __init__(self, fail_on: int | None = None, wrong_length: bool = False):
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail_on, self.wrong_length = fail_on, wrong_length

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            await self.release.wait()
        if self.fail_on in items:
            raise ValueError("this batch failed")
        if self.wrong_length:
            return [x * 10 for x in items][:-1]
        return [x * 10 for x in items]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_requests_waiting_during_a_batch_form_full_batches_and_get_their_own_results():
    async def scenario():
        handler = RecordingHandler()
        batcher = DynamicBatcher(handler, max_batch_size=4, wait_timeout_s=0.05)
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.1)  # the first batch ([0]) is running and blocked
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 10)]
        await settle()
        handler.release.set()
        return await asyncio.gather(first, *rest), handler.batches

    results, batches = asyncio.run(scenario())
    assert results == [i * 10 for i in range(10)]
    assert batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]


def test_a_lone_request_waits_at_most_the_timeout():
    async def scenario():
        handler = RecordingHandler()
        handler.release.set()
        batcher = DynamicBatcher(handler, max_batch_size=8, wait_timeout_s=0.02)
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await batcher.submit(7)
        return result, loop.time() - started, handler.batches

    result, waited, batches = asyncio.run(scenario())
    assert result == 70 and batches == [[7]]
    assert waited < 1.0


def test_a_failed_batch_fails_only_its_own_callers_and_the_worker_goes_on():
    async def scenario():
        handler = RecordingHandler(fail_on=3)
        batcher = DynamicBatcher(handler, max_batch_size=2, wait_timeout_s=0.0)
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(batcher.submit(i)) for i in (2, 3, 4, 5)]
        await settle()
        handler.release.set()
        outcomes = await asyncio.gather(first, *queued, return_exceptions=True)
        after = await batcher.submit(6)
        return outcomes, after, handler.batches

    outcomes, after, batches = asyncio.run(scenario())
    assert batches[:3] == [[0], [2, 3], [4, 5]]
    assert outcomes[0] == 0 and outcomes[3:] == [40, 50]
    assert all(isinstance(o, ValueError) for o in outcomes[1:3])
    assert after == 60


def test_a_handler_that_loses_results_fails_the_batch_instead_of_misassigning():
    async def scenario():
        handler = RecordingHandler(wrong_length=True)
        handler.release.set()
        batcher = DynamicBatcher(handler, max_batch_size=4, wait_timeout_s=0.05)
        return await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, RuntimeError) for o in outcomes)


def test_a_caller_that_went_away_is_not_scored():
    async def scenario():
        handler = RecordingHandler()
        batcher = DynamicBatcher(handler, max_batch_size=4, wait_timeout_s=0.0)
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(batcher.submit(1))
        kept = asyncio.create_task(batcher.submit(2))
        await settle()
        gone.cancel()
        await settle()
        handler.release.set()
        return await first, await kept, handler.batches

    first, kept, batches = asyncio.run(scenario())
    assert (first, kept) == (0, 20)
    assert batches == [[0], [2]]


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError):
        DynamicBatcher(lambda items: items, max_batch_size=0)
