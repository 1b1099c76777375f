"""Triton-style dynamic batching for asyncio: concurrent requests for one model share one inference call.

Callers ``await batcher.submit(item, deadline)``. One worker task per batcher takes the oldest queued item,
then keeps collecting until the batch holds ``max_batch_size`` items or ``max_queue_delay_ms`` has passed
since it took the first one, and runs ``infer_batch(items) -> results`` once: in a thread when it is a plain
function (ONNX Runtime releases the GIL, so the event loop keeps serving), awaited when it is a coroutine
function (a remote server's async client). Triton's rules carry over:

- an item whose deadline (``time.monotonic``) passed while it was queued is dropped before inference with
  DEADLINE_EXCEEDED; a caller still waiting at its deadline gets DEADLINE_EXCEEDED at once;
- a cancelled caller's item is skipped;
- an exception fails the callers of that batch only; the worker carries on with the next batch.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from service.errors import ErrorCode, ServiceError
from service.metrics import ServiceMetrics

log = logging.getLogger("medclm.engines.batching")

Item = TypeVar("Item")
Result = TypeVar("Result")
InferBatch = Callable[[list[Any]], "list[Any] | Awaitable[list[Any]]"]


def deadline_exceeded() -> ServiceError:
    """The error of a request whose deadline passed before it reached the model."""
    return ServiceError(ErrorCode.DEADLINE_EXCEEDED, "the request deadline passed before the model ran it")


@dataclass
class _Pending:
    item: Any
    deadline: float | None
    future: asyncio.Future = field(repr=False)


class DynamicBatcher(Generic[Item, Result]):
    """Batches ``submit`` calls for one model into ``infer_batch`` calls (see the module docstring).

    ``batching=False`` runs every item alone, still off the event loop. ``metrics`` (optional) receives each
    batch size under ``model=name``. ``clock`` is the deadline clock (``time.monotonic``; tests pass a fake).
    """

    def __init__(self, infer_batch: InferBatch, *, name: str, batching: bool = True, max_batch_size: int = 8,
                 max_queue_delay_ms: float = 2.0, metrics: ServiceMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
        if max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must not be negative, not {max_queue_delay_ms}")
        self.infer_batch = infer_batch
        self.name = name
        self.batching = batching
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_ms / 1000.0
        self.metrics = metrics
        self.clock = clock
        self._is_async = inspect.iscoroutinefunction(infer_batch)
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None
        self._running: list[_Pending] = []  # the batch inside infer_batch right now
        self._closed = False

    @property
    def queued(self) -> int:
        """Items waiting for a batch (not counting the batch being run)."""
        return self._queue.qsize() if self._queue is not None else 0

    # --- callers ---
    async def submit(self, item: Item, deadline: float | None = None) -> Result:
        """The result of ``item``; DEADLINE_EXCEEDED if ``deadline`` passes before it is served, UNAVAILABLE
        once the batcher is closed, or the exception ``infer_batch`` raised for its batch."""
        if self._closed:
            raise ServiceError(ErrorCode.UNAVAILABLE, f"model {self.name} is shutting down", retry_after=1.0)
        if deadline is not None and self.clock() >= deadline:
            raise deadline_exceeded()
        if not self.batching:
            return await self._wait(self._run_alone(item), deadline)
        pending = _Pending(item, deadline, asyncio.get_running_loop().create_future())
        self._ensure_worker()
        self._queue.put_nowait(pending)
        try:
            return await self._wait(asyncio.shield(pending.future), deadline)
        finally:
            # Gone caller (cancelled, timed out): the worker skips the item, or drops the result if it ran.
            if not pending.future.done():
                pending.future.cancel()

    async def _wait(self, awaitable: Awaitable, deadline: float | None):
        if deadline is None:
            return await awaitable
        try:
            return await asyncio.wait_for(awaitable, max(0.0, deadline - self.clock()))
        except asyncio.TimeoutError:
            raise deadline_exceeded() from None

    async def _run_alone(self, item: Item) -> Result:
        self._observe(1)
        results = await self._call([item])
        self._check_count(results, 1)
        return results[0]

    # --- worker ---
    def _ensure_worker(self) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"batcher-{self.name}")

    async def _work(self) -> None:
        while True:
            try:
                live = self._drop_expired(await self._collect())
                if live:
                    await self._run_batch(live)
            except Exception:  # a bug here must not strand every later caller
                log.exception("dynamic batcher of %s: unexpected error, continuing", self.name)

    async def _run_batch(self, live: list[_Pending]) -> None:
        self._running = live  # close() fails these if it interrupts the batch
        try:
            self._observe(len(live))
            results = await self._call([p.item for p in live])
            self._check_count(results, len(live))
        except Exception as exc:  # the batch's callers get the error; the next batch is unaffected
            for pending in live:
                if not pending.future.done():
                    pending.future.set_exception(exc)
        else:
            for pending, result in zip(live, results):
                if not pending.future.done():
                    pending.future.set_result(result)
        self._running = []

    async def _collect(self) -> list[_Pending]:
        """The oldest live item, then whatever arrives until the batch is full or the delay is over."""
        batch = [await self._next_live(None)]
        close_at = asyncio.get_running_loop().time() + self.max_queue_delay_s
        while len(batch) < self.max_batch_size:
            try:
                pending = await self._next_live(close_at)
            except asyncio.TimeoutError:
                break
            batch.append(pending)
        return batch

    async def _next_live(self, close_at: float | None) -> _Pending:
        """Next queued item whose caller still waits; TimeoutError once ``close_at`` (loop time) passes."""
        while True:
            if close_at is None:
                pending = await self._queue.get()
            elif not self._queue.empty():
                pending = self._queue.get_nowait()  # already queued items join even when the delay is 0
            else:
                left = close_at - asyncio.get_running_loop().time()
                if left <= 0:
                    raise asyncio.TimeoutError
                pending = await asyncio.wait_for(self._queue.get(), left)
            if self._expired(pending):
                continue
            if not pending.future.done():  # a cancelled caller does not take a place in the batch
                return pending

    def _expired(self, pending: _Pending) -> bool:
        """True (and the caller told DEADLINE_EXCEEDED) when the item's deadline has passed."""
        if pending.deadline is None or self.clock() < pending.deadline:
            return False
        if not pending.future.done():
            pending.future.set_exception(deadline_exceeded())
        return True

    def _drop_expired(self, batch: list[_Pending]) -> list[_Pending]:
        # Checked again after the delay: an item may have expired while the batch was filling.
        return [p for p in batch if not p.future.done() and not self._expired(p)]

    async def _call(self, items: list[Item]) -> list[Result]:
        if self._is_async:
            return await self.infer_batch(items)
        return await asyncio.to_thread(self.infer_batch, items)

    def _check_count(self, results: list, expected: int) -> None:
        if len(results) != expected:
            raise RuntimeError(f"infer_batch for {self.name} returned {len(results)} results for {expected} items")

    def _observe(self, size: int) -> None:
        if self.metrics is not None:
            self.metrics.batch_size.labels(model=self.name).observe(size)

    # --- lifecycle ---
    async def close(self) -> None:
        """Stop the worker; queued and running callers get UNAVAILABLE, later submits too."""
        self._closed = True
        stranded = list(self._running)
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                pass
        closing = ServiceError(ErrorCode.UNAVAILABLE, f"model {self.name} is shutting down", retry_after=1.0)
        self._running = []
        while self._queue is not None and not self._queue.empty():
            stranded.append(self._queue.get_nowait())
        for pending in stranded:
            if not pending.future.done():
                pending.future.set_exception(closing)
