"""Run the service: build the pipeline, start gRPC and HTTP on one event loop, drain on SIGTERM.

Start-up order: engines first (a model that fails to load leaves the service up and not ready), then both
servers; once both listen, one JSON line ``{"http_port": ..., "grpc_port": ...}`` goes to stdout so scripts
and tests find the ports (0 = pick a free one). SIGTERM/SIGINT: readiness turns false and new requests get
UNAVAILABLE, in-flight requests finish within ``shutdown_grace_s``, then the servers stop and the process
exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys

import uvicorn

from service.config import Settings
from service.engines.factory import build_pipeline
from service.metrics import ServiceMetrics

log = logging.getLogger("medclm.runner")


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the runner owns SIGTERM for both transports."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def serve(settings: Settings, announce=print) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code."""
    from service.grpc.server import create_server
    from service.http.app import create_app

    metrics = ServiceMetrics()
    pipeline = build_pipeline(settings, metrics)
    await pipeline.start()
    grpc_server, grpc_port = await create_server(pipeline, settings, metrics)
    await grpc_server.start()
    app = create_app(pipeline, settings, metrics)
    http = _EmbeddedUvicorn(uvicorn.Config(app, host=settings.host, port=settings.http_port, log_config=None,
                                           lifespan="off", timeout_graceful_shutdown=settings.shutdown_grace_s,
                                           limit_concurrency=None, access_log=False))
    http_task = asyncio.create_task(http.serve())
    while not http.started:
        if http_task.done():  # the port was taken, or the app failed to start
            await grpc_server.stop(0)
            await pipeline.close()
            return 1
        await asyncio.sleep(0.05)
    http_port = http.servers[0].sockets[0].getsockname()[1]
    announce(json.dumps({"http_port": http_port, "grpc_port": grpc_port}))
    sys.stdout.flush()
    log.info("serving", extra={"http_port": http_port, "grpc_port": grpc_port, "ready": pipeline.ready()})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("draining", extra={"grace_s": settings.shutdown_grace_s})
    pipeline.start_draining()
    # gRPC: stop accepting, let in-flight calls finish within the grace period; HTTP likewise.
    http.should_exit = True
    await asyncio.gather(grpc_server.stop(settings.shutdown_grace_s), http_task, return_exceptions=True)
    await pipeline.close()
    log.info("stopped")
    return 0
