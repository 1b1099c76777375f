"""Run the real ``grpc.aio`` server of ``service.grpc.server`` on its own event loop in a background thread,
so plain (synchronous) tests can call it with ordinary grpc stubs.

    with GrpcServerThread(core, settings) as server:
        stub = medclm_pb2_grpc.MedCLMStub(server.channel())

The server binds what ``settings`` say (tests use host 127.0.0.1, grpc_port 0) and ``start`` returns only
once it answers a health check.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

START_TIMEOUT_S = 30.0


class GrpcServerThread:
    """``create_server(core, settings, metrics, **options)`` served from a daemon thread until ``stop``."""

    def __init__(self, core, settings, metrics=None, **options):
        self.core = core
        self.settings = settings
        self.metrics = metrics
        self.options = options
        self.port: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready: concurrent.futures.Future = concurrent.futures.Future()
        self._stop: asyncio.Event | None = None
        self._grace: float | None = None
        self._thread = threading.Thread(target=self._run, name="grpc-server", daemon=True)
        self._channels: list[grpc.Channel] = []

    @property
    def address(self) -> str:
        """host:port to dial."""
        return f"{self.settings.host}:{self.port}"

    def start(self) -> "GrpcServerThread":
        """Start the server and wait until it answers ``grpc.health.v1.Health/Check`` (any status)."""
        self._thread.start()
        self.port = self._ready.result(timeout=START_TIMEOUT_S)  # re-raises a failed start
        health = health_pb2_grpc.HealthStub(self.channel())
        health.Check(health_pb2.HealthCheckRequest(), timeout=START_TIMEOUT_S, wait_for_ready=True)
        return self

    def channel(self, options=()) -> grpc.Channel:
        """A new synchronous channel to the server, closed by ``stop``."""
        channel = grpc.insecure_channel(self.address, options=list(options))
        self._channels.append(channel)
        return channel

    def run(self, coroutine, timeout: float = START_TIMEOUT_S):
        """Run ``coroutine`` on the server's event loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self, grace: float | None = None) -> None:
        """Close the channels, stop the server (cancelling calls still running after ``grace``), join."""
        for channel in self._channels:
            channel.close()
        self._grace = grace
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_TIMEOUT_S)

    def __enter__(self) -> "GrpcServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        from service.grpc.server import create_server

        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            server, port = await create_server(self.core, self.settings, self.metrics, **self.options)
            await server.start()
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(port)
        await self._stop.wait()
        await server.stop(self._grace)
