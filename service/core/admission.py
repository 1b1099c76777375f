"""Admission control: a bound on requests inside an engine and on requests waiting for it.

vLLM's own queue is unbounded, so under overload latency grows without limit; here a request beyond
``max_running + max_waiting`` is refused at once with OVERLOADED (HTTP 429 + Retry-After, gRPC
RESOURCE_EXHAUSTED), before any image is decoded, and an admitted request waits for a running slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator

from service.errors import ErrorCode, ServiceError


class AdmissionGate:
    """Counts admitted requests; at most ``max_running`` hold a slot at once."""

    def __init__(self, name: str, max_running: int, max_waiting: int, retry_after_s: float = 1.0):
        if max_running < 1 or max_waiting < 0:
            raise ValueError("max_running must be >= 1 and max_waiting >= 0")
        self.name = name
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.retry_after_s = retry_after_s
        self.admitted = 0  # running + waiting
        self._slots = asyncio.Semaphore(max_running)

    def admit(self) -> None:
        """Take an admission or refuse with OVERLOADED; call :meth:`release` exactly once afterwards."""
        if self.admitted >= self.max_running + self.max_waiting:
            raise ServiceError(ErrorCode.OVERLOADED, f"{self.name} is at capacity ({self.max_running} running, "
                               f"{self.max_waiting} waiting); retry later", retry_after=self.retry_after_s)
        self.admitted += 1

    def release(self) -> None:
        """Give back an admission taken by :meth:`admit`."""
        self.admitted -= 1

    @contextlib.asynccontextmanager
    async def running(self, deadline: float | None = None) -> AsyncIterator[None]:
        """Hold a running slot (waits while ``max_running`` others hold one); a request whose deadline
        (time.monotonic) passes while it waits is refused with DEADLINE_EXCEEDED and never starts."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except TimeoutError as exc:
            raise ServiceError(ErrorCode.DEADLINE_EXCEEDED, "the request deadline passed while it waited in the "
                               "queue") from exc
        try:
            yield
        finally:
            self._slots.release()

    @property
    def waiting(self) -> int:
        """Admitted requests that do not hold a running slot yet."""
        return max(0, self.admitted - (self.max_running - self._slots._value))
