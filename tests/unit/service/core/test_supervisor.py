"""The engine supervisor: a down engine is recovered with exponential backoff, a healthy one is left alone,
and a failing recovery never stops the watching. Engines here are fakes (named Fake*)."""

from __future__ import annotations

import asyncio

import pytest

from service.core.supervisor import EngineSupervisor, Recoverable, next_backoff
from service.metrics import ServiceMetrics


class FakeFlakyEngine:
    """Not ready until ``recover`` has been called ``failures + 1`` times; each failed attempt raises."""

    def __init__(self, failures: int, ready: bool = False):
        self.failures, self.is_ready, self.attempts = failures, ready, 0

    def ready(self) -> bool:
        return self.is_ready

    async def recover(self) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise RuntimeError("still down")
        self.is_ready = True


def test_backoff_doubles_up_to_the_cap():
    waits = [1.0]
    for _ in range(6):
        waits.append(next_backoff(waits[-1], 10.0))
    assert waits == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_a_fake_engine_is_recoverable_and_a_plain_one_is_not():
    assert isinstance(FakeFlakyEngine(0), Recoverable)
    assert not isinstance(object(), Recoverable)


def test_a_down_engine_is_retried_until_it_recovers_and_counted_once(monkeypatch):
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded_sleep(seconds):  # no wall-clock waiting: record the backoff, yield to the loop
        sleeps.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr("service.core.supervisor.asyncio.sleep", recorded_sleep)
    engine, healthy = FakeFlakyEngine(failures=3), FakeFlakyEngine(failures=0, ready=True)
    metrics = ServiceMetrics()
    refreshed: list[int] = []

    async def scenario():
        supervisor = EngineSupervisor({"medclm": engine, "segmentation": healthy}, metrics, max_backoff_s=3.0,
                                      check_interval_s=0.5, after_attempt=lambda: refreshed.append(1))
        supervisor.start()
        while not engine.ready():
            await real_sleep(0)
        await supervisor.stop()

    asyncio.run(scenario())
    assert engine.attempts == 4 and healthy.attempts == 0
    assert len(refreshed) == 4  # the repository is looked at again after every attempt
    backoffs = [s for s in sleeps if s != 0.5]
    assert backoffs[:4] == [1.0, 2.0, 3.0, 3.0]  # doubled, capped at max_backoff_s
    assert metrics.engine_restarts.labels(model="medclm")._value.get() == 1
    assert metrics.engine_restarts.labels(model="segmentation")._value.get() == 0


@pytest.mark.parametrize("max_backoff", [0.5, 30.0])
def test_next_backoff_never_exceeds_the_cap(max_backoff):
    assert next_backoff(max_backoff, max_backoff) == max_backoff
