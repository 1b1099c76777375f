"""DynamicBatcher with a fake model: batch composition, delay bound, deadlines, failures, cancellation.

Nothing here measures speed: each test asserts which items went into which ``infer_batch`` call. The
delay bound shows as "a partial batch is served at all" (a batcher waiting for a full batch would hang
until pytest-timeout fails the test) and "a full batch does not wait out a long delay".
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.engines.batching import DynamicBatcher
from service.errors import ErrorCode, ServiceError
from service.metrics import ServiceMetrics

pytestmark = pytest.mark.timeout(30)

LONG_DELAY_MS = 60_000.0  # a minute: a test that waits it out fails on the timeout instead


class FakeInfer:
    """A fake model: records each batch, answers ``item * 10``, fails batches holding "boom", and can be
    held inside a batch (``hold()``) so that later submits queue up behind it."""

    def __init__(self):
        self.batches: list[list] = []
        self.threads: set[int] = set()
        self.entered = threading.Event()
        self._gate = threading.Event()
        self._gate.set()

    def hold(self) -> None:
        """The next batch blocks inside infer until :meth:`release`."""
        self._gate.clear()
        self.entered.clear()

    def release(self) -> None:
        self._gate.set()

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 10), "infer_batch was never called"

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        self.threads.add(threading.get_ident())
        self.entered.set()
        self._gate.wait(10)
        if "boom" in items:
            raise RuntimeError("model failed on this batch")
        return [item * 10 for item in items]


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _until_queued(batcher: DynamicBatcher, count: int) -> None:
    while batcher.queued < count:
        await asyncio.sleep(0)


def test_concurrent_submits_form_full_batches_in_arrival_order():
    fake, metrics = FakeInfer(), ServiceMetrics()

    async def scenario():
        batcher = DynamicBatcher(fake, name="organ_seg_ct", max_batch_size=4, max_queue_delay_ms=20,
                                 metrics=metrics)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == [i * 10 for i in range(10)]
    assert fake.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert metrics.registry.get_sample_value("medclm_segmentation_batch_size_count", {"model": "organ_seg_ct"}) == 3
    assert metrics.registry.get_sample_value("medclm_segmentation_batch_size_sum", {"model": "organ_seg_ct"}) == 10


def test_full_batch_does_not_wait_out_the_delay():
    fake = FakeInfer()

    async def scenario():
        batcher = DynamicBatcher(fake, name="m", max_batch_size=3, max_queue_delay_ms=LONG_DELAY_MS)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(3)))
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == [0, 10, 20]
    assert fake.batches == [[0, 1, 2]]


def test_partial_batch_is_served_after_the_delay_and_later_arrivals_form_the_next_batch():
    fake = FakeInfer()

    async def scenario():
        batcher = DynamicBatcher(fake, name="m", max_batch_size=8, max_queue_delay_ms=10)
        assert await batcher.submit(1) == 10  # alone, once the delay is over: never waits for 8
        fake.hold()
        first = asyncio.create_task(batcher.submit(2))
        await fake.wait_entered()  # [2] is running; the next three queue up behind it, in this order
        later = [asyncio.create_task(batcher.submit(i)) for i in (3, 4, 5)]
        await _until_queued(batcher, 3)
        fake.release()
        results = [await first] + [await task for task in later]
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == [20, 30, 40, 50]
    assert fake.batches == [[1], [2], [3, 4, 5]]


def test_zero_delay_serves_sequential_callers_one_by_one():
    fake = FakeInfer()

    async def scenario():
        batcher = DynamicBatcher(fake, name="m", max_batch_size=8, max_queue_delay_ms=0)
        results = [await batcher.submit(i) for i in range(3)]
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == [0, 10, 20]
    assert fake.batches == [[0], [1], [2]]


def test_items_that_expire_while_queued_never_reach_infer():
    fake, clock = FakeInfer(), FakeClock()

    async def scenario():
        batcher = DynamicBatcher(fake, name="m", max_batch_size=8, max_queue_delay_ms=0, clock=clock)
        fake.hold()
        running = asyncio.create_task(batcher.submit(1))
        await fake.wait_entered()
        expiring = asyncio.create_task(batcher.submit(2, deadline=clock.now + 5.0))
        patient = asyncio.create_task(batcher.submit(3, deadline=clock.now + 60.0))
        await _until_queued(batcher, 2)
        clock.now += 10.0  # item 2's deadline passes while it waits behind the running batch
        fake.release()
        with pytest.raises(ServiceError) as caught:
            await expiring
        results = (await running, await patient)
        await batcher.close()
        return caught.value, results

    error, results = asyncio.run(scenario())
    assert error.code == ErrorCode.DEADLINE_EXCEEDED
    assert results == (10, 30)
    assert fake.batches == [[1], [3]]


def test_a_waiting_caller_gets_deadline_exceeded_at_its_deadline():
    fake = FakeInfer()

    async def scenario():
        batcher = DynamicBatcher(fake, name="m", max_batch_size=8, max_queue_delay_ms=0)
        fake.hold()
        running = asyncio.create_task(batcher.submit(1))
        await fake.wait_entered()
        try:
            # The model is still busy with [1]: the caller is answered without waiting for it.
            with pytest.raises(ServiceError) as caught:
                await batcher.submit(2, deadline=time.monotonic() + 0.05)
        finally:
            fake.release()
        after = await batcher.submit(3)
        result = await running
        await batcher.close()
        return caught.value, result, after

    error, result, after = asyncio.run(scenario())
    assert error.code == ErrorCode.DEADLINE_EXCEEDED
    assert (result, after) == (10, 30)
    assert fake.batches == [[1], [3]]


def test_a_deadline_already_passed_is_refused_without_inference():
    fake = FakeInfer()

    async def scenario():
        batcher = DynamicBatcher(fake, name="m")
        with pytest.raises(ServiceError) as caught:
            await batcher.submit(1, deadline=time.monotonic() - 1.0)
        await batcher.close()
        return caught.value

    assert asyncio.run(scenario()).code == ErrorCode.DEADLINE_EXCEEDED
    assert fake.batches == []


def test_a_failing_batch_fails_only_its_callers_and_the_worker_carries_on():
    fake = FakeInfer()

    async def scenario():
        batcher = DynamicBatcher(fake, name="m", max_batch_size=2, max_queue_delay_ms=LONG_DELAY_MS)
        outcomes = await asyncio.gather(*(batcher.submit(i) for i in ("boom", 1, 2, 3)), return_exceptions=True)
        after = await asyncio.gather(batcher.submit(4), batcher.submit(5))
        await batcher.close()
        return outcomes, after

    outcomes, after = asyncio.run(scenario())
    assert [type(o) for o in outcomes[:2]] == [RuntimeError, RuntimeError]
    assert outcomes[2:] == [20, 30]
    assert after == [40, 50]
    assert fake.batches == [["boom", 1], [2, 3], [4, 5]]


def test_a_cancelled_caller_is_skipped():
    fake = FakeInfer()

    async def scenario():
        batcher = DynamicBatcher(fake, name="m", max_batch_size=8, max_queue_delay_ms=0)
        fake.hold()
        running = asyncio.create_task(batcher.submit(1))
        await fake.wait_entered()
        gone = asyncio.create_task(batcher.submit(2))
        kept = asyncio.create_task(batcher.submit(3))
        await _until_queued(batcher, 2)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        fake.release()
        results = (await running, await kept)
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == (10, 30)
    assert fake.batches == [[1], [3]]


def test_batching_off_runs_each_item_alone_off_the_event_loop():
    fake, metrics = FakeInfer(), ServiceMetrics()

    async def scenario():
        batcher = DynamicBatcher(fake, name="m", batching=False, max_batch_size=8,
                                 max_queue_delay_ms=LONG_DELAY_MS, metrics=metrics)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(4)))
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == [0, 10, 20, 30]
    assert sorted(fake.batches) == [[0], [1], [2], [3]]
    assert threading.get_ident() not in fake.threads
    assert metrics.registry.get_sample_value("medclm_segmentation_batch_size_sum", {"model": "m"}) == 4


def test_an_async_infer_batch_is_awaited_on_the_loop():
    batches = []

    async def fake_remote_infer(items: list) -> list:
        batches.append((list(items), threading.get_ident()))
        await asyncio.sleep(0)
        return [-item for item in items]

    async def scenario():
        batcher = DynamicBatcher(fake_remote_infer, name="m", max_batch_size=4, max_queue_delay_ms=LONG_DELAY_MS)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(4)))
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == [0, -1, -2, -3]
    assert batches == [([0, 1, 2, 3], threading.get_ident())]


def test_a_wrong_result_count_fails_the_batch():
    def fake_short_infer(items: list) -> list:
        return items[:-1]

    async def scenario():
        batcher = DynamicBatcher(fake_short_infer, name="m", max_batch_size=2, max_queue_delay_ms=LONG_DELAY_MS)
        outcomes = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        await batcher.close()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, RuntimeError) and "returned 1 results for 2 items" in str(o) for o in outcomes)


def test_close_answers_running_and_queued_callers_and_refuses_new_ones():
    fake = FakeInfer()

    async def scenario():
        batcher = DynamicBatcher(fake, name="organ_seg_cxr", max_batch_size=8, max_queue_delay_ms=0)
        fake.hold()
        try:
            running = asyncio.create_task(batcher.submit(1))
            await fake.wait_entered()
            queued = asyncio.create_task(batcher.submit(2))
            await _until_queued(batcher, 1)
            await batcher.close()
            outcomes = await asyncio.gather(running, queued, return_exceptions=True)
            with pytest.raises(ServiceError) as later:
                await batcher.submit(3)
        finally:
            fake.release()  # let the abandoned thread finish before the loop shuts its executor down
        return outcomes, later.value

    outcomes, later = asyncio.run(scenario())
    assert [o.code for o in outcomes] == [ErrorCode.UNAVAILABLE, ErrorCode.UNAVAILABLE]
    assert later.code == ErrorCode.UNAVAILABLE and "organ_seg_cxr" in later.message
    assert fake.batches == [[1]]


def test_invalid_sizes_are_rejected():
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(FakeInfer(), name="m", max_batch_size=0)
    with pytest.raises(ValueError, match="max_queue_delay_ms"):
        DynamicBatcher(FakeInfer(), name="m", max_queue_delay_ms=-1)
