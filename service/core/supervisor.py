"""Automatic recovery: engines that are down are reloaded with exponential backoff.

An engine that can recover has ``ready()`` and ``async recover()`` (load what failed to load, restart what
died). One watcher task per engine checks readiness every ``check_interval_s``; once the engine is not
ready it calls ``recover()`` after 1 s, then 2 s, 4 s, ... up to ``max_backoff_s`` between attempts, and
starts again from 1 s once the engine is back. While an engine is down the core answers UNAVAILABLE at
once (it checks ``ready()`` before admitting), so callers never wait on a recovery.

Readiness that an engine watches itself (Triton's probe) needs no recovery; its ``recover`` only reloads
local files that were missing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from service.metrics import ServiceMetrics

log = logging.getLogger("medclm.supervisor")

FIRST_BACKOFF_S = 1.0


@runtime_checkable
class Recoverable(Protocol):
    """An engine the supervisor can bring back."""

    def ready(self) -> bool:
        """True while requests can be served."""

    async def recover(self) -> None:
        """Try once to load what is missing or restart what died; raise when it did not work."""


def next_backoff(current: float, max_backoff_s: float) -> float:
    """The wait after a failed attempt: doubled, at most ``max_backoff_s``."""
    return min(max_backoff_s, current * 2.0)


class EngineSupervisor:
    """Watches ``targets`` (name → engine) and recovers those that are down (see the module docstring).

    ``after_attempt`` runs after every recovery attempt (the pipeline re-reads the model repository then).
    """

    def __init__(self, targets: dict[str, Recoverable], metrics: ServiceMetrics, *, max_backoff_s: float = 30.0,
                 check_interval_s: float = 1.0, after_attempt: Callable[[], None] | None = None):
        self.targets = dict(targets)
        self.metrics = metrics
        self.max_backoff_s = max_backoff_s
        self.check_interval_s = check_interval_s
        self.after_attempt = after_attempt
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        """One watcher task per target, on the running loop."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch(name, target), name=f"supervise-{name}")
                       for name, target in self.targets.items()]

    async def stop(self) -> None:
        """Cancel the watchers (an attempt in progress is abandoned)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, name: str, target: Recoverable) -> None:
        backoff = FIRST_BACKOFF_S
        while True:
            if self._ready(name, target):
                backoff = FIRST_BACKOFF_S
                await asyncio.sleep(self.check_interval_s)
                continue
            await asyncio.sleep(backoff)
            if self._ready(name, target):  # came back by itself (e.g. Triton's probe)
                continue
            log.warning("engine %s is down; recovery attempt (next wait %.0f s)", name,
                        next_backoff(backoff, self.max_backoff_s))
            try:
                await target.recover()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure means "try again later"
                log.warning("engine %s did not recover: %s", name, _short(exc))
            if self.after_attempt is not None:
                self.after_attempt()
            if self._ready(name, target):
                log.info("engine %s recovered", name)
                self.metrics.engine_restarts.labels(model=name).inc()
                backoff = FIRST_BACKOFF_S
            else:
                backoff = next_backoff(backoff, self.max_backoff_s)

    @staticmethod
    def _ready(name: str, target: Recoverable) -> bool:
        try:
            return bool(target.ready())
        except Exception:  # noqa: BLE001 - a failing readiness check means not ready
            log.exception("readiness of engine %s failed", name)
            return False


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc)
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
