"""Load generation: closed loop (a fixed number of callers, each sending its next request when the last one
answered) and open loop (Poisson arrivals at a given rate, as independent users would send them).

Every level stops by itself: after ``duration`` seconds or ``requests`` requests, whichever is given; a level
never outlives ``duration + timeout`` (requests still running then are cancelled and recorded as
``client:timeout``). In the open loop at most ``max_in_flight`` requests run at once; an arrival beyond
that is not sent and is recorded as ``client:overflow``, so an overloaded target shows up as errors instead
of the client silently slowing down (which would hide the overload: coordinated omission).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass

from loadtests.clients import Client
from loadtests.metrics import RequestRecord
from loadtests.scenarios import RequestPlan


@dataclass
class LevelRun:
    """The records of one load level and its measured wall time."""

    records: list[RequestRecord]
    started: float
    ended: float

    @property
    def wall_s(self) -> float:
        """From the first send to the last answer."""
        return self.ended - self.started


def _check_stop(duration: float | None, requests: int | None) -> None:
    if (duration is None) == (requests is None):
        raise ValueError("give exactly one of duration or requests")
    if duration is not None and duration <= 0:
        raise ValueError("duration must be positive")
    if requests is not None and requests < 1:
        raise ValueError("requests must be at least 1")


async def closed_loop(client: Client, plan: RequestPlan, concurrency: int, *, duration: float | None = None,
                      requests: int | None = None, timeout: float = 120.0) -> LevelRun:
    """``concurrency`` callers send back to back until ``duration`` has passed or ``requests`` were sent."""
    _check_stop(duration, requests)
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    records: list[RequestRecord] = []
    started = time.perf_counter()
    stop_at = started + duration if duration is not None else math.inf
    sent = 0

    async def caller() -> None:
        nonlocal sent
        while (requests is None or sent < requests) and time.perf_counter() < stop_at:
            sent += 1
            records.append(await client.send(plan.next(), timeout))

    callers = [asyncio.create_task(caller()) for _ in range(concurrency)]
    await _bounded(callers, None if duration is None else duration + timeout + 5.0, records, started)
    return LevelRun(records, started, max([started, *(r.end for r in records)]))


async def open_loop(client: Client, plan: RequestPlan, rate: float, *, duration: float | None = None,
                    requests: int | None = None, timeout: float = 120.0, max_in_flight: int = 256,
                    seed: int = 0) -> LevelRun:
    """Poisson arrivals at ``rate`` requests/s (exponential gaps from a seeded generator)."""
    _check_stop(duration, requests)
    if rate <= 0:
        raise ValueError("rate must be positive")
    rng = random.Random(seed)
    records: list[RequestRecord] = []
    in_flight: set[asyncio.Task] = set()
    started = time.perf_counter()
    stop_at = started + duration if duration is not None else math.inf
    next_at = started
    sent = 0

    async def one(spec) -> None:
        records.append(await client.send(spec, timeout))

    while requests is None or sent < requests:
        next_at += rng.expovariate(rate)
        if next_at >= stop_at:
            break
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        sent += 1
        spec = plan.next()
        if len(in_flight) >= max_in_flight:
            now = time.perf_counter()
            records.append(RequestRecord(spec.kind, now, now, False, "client:overflow",
                                         error=f"{max_in_flight} requests already in flight"))
            continue
        task = asyncio.create_task(one(spec))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await _bounded(list(in_flight), timeout + 5.0, records, started)
    return LevelRun(records, started, max([started, *(r.end for r in records)]))


async def _bounded(tasks: list[asyncio.Task], limit_s: float | None, records: list[RequestRecord],
                   started: float) -> None:
    """Wait for ``tasks``; past ``limit_s`` cancel the rest and record each as a client timeout."""
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=limit_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
        now = time.perf_counter()
        records.extend(RequestRecord("unknown", now, now, False, "client:timeout", error="level time limit")
                       for _ in pending)
    for task in done:
        if task.exception() is not None:  # a bug in a client: surface it rather than report partial figures
            raise task.exception()


async def warm_up(client: Client, plan: RequestPlan, requests: int, concurrency: int, timeout: float) -> None:
    """Send ``requests`` requests whose figures are discarded (first calls compile, allocate, connect)."""
    if requests > 0:
        await closed_loop(client, plan, max(1, min(concurrency, requests)), requests=requests, timeout=timeout)
