"""Run the service: build the pipeline, start gRPC and HTTP on one event loop, drain on SIGTERM.

Start-up order: engines first (a model that fails to load leaves the service up and not ready, and the
pipeline's supervisor keeps retrying it), then both servers; once both listen, one JSON line
``{"http_port": ..., "grpc_port": ...}`` goes to stdout so scripts and tests find the ports (0 = pick a free
one). Malformed API-key or TLS settings stop the start with exit code 2.

SIGTERM/SIGINT drains: readiness turns false (HTTP 503, gRPC health NOT_SERVING, Watch streams end) and new
requests get UNAVAILABLE while both servers keep listening; every request already accepted, waiting ones
included, runs to its end. Once none is left, or ``shutdown_grace_s`` has passed (or a second signal
arrives), the servers stop, cutting off whatever still runs, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import ssl
import sys

import uvicorn

from service.auth import Authenticator
from service.config import Settings
from service.engines.factory import build_pipeline
from service.metrics import ServiceMetrics

log = logging.getLogger("medclm.runner")


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the runner owns SIGTERM for both transports."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


DRAIN_POLL_S = 0.05
FINAL_WRITES_S = 1.0  # after the last request left the core: time to send its last bytes


def uvicorn_tls_options(settings: Settings) -> dict:
    """uvicorn's ssl_* options for HTTPS (and client certificates with ``tls_client_ca_file``); {} without TLS."""
    if not settings.tls:
        return {}
    options = {"ssl_certfile": str(settings.tls_cert_file), "ssl_keyfile": str(settings.tls_key_file)}
    if settings.tls_client_ca_file is not None:
        options.update(ssl_ca_certs=str(settings.tls_client_ca_file), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def check_security_settings(settings: Settings) -> Authenticator | None:
    """The authenticator, after checking keys and TLS files can be read; None (logged) when they cannot."""
    try:
        authenticator = Authenticator.from_settings(settings)
        for path in (settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist")
    except ValueError as exc:
        log.error("invalid security settings: %s", exc)
        return None
    if not authenticator.enabled and settings.host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("serving on %s without API keys: every caller that reaches the port is let in", settings.host)
    if authenticator.enabled and not settings.tls and settings.host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("API keys travel in clear text: serve TLS (tls_cert_file) or put a TLS proxy in front")
    return authenticator


async def drain(pipeline, grace_s: float, interrupted: asyncio.Event) -> None:
    """Stop admitting requests and wait until every accepted one has finished, ``grace_s`` has passed or
    ``interrupted`` is set (a second signal)."""
    pipeline.start_draining()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while pipeline.in_flight() > 0 and loop.time() < deadline and not interrupted.is_set():
        await asyncio.sleep(DRAIN_POLL_S)
    left = pipeline.in_flight()
    if left:
        log.warning("shutting down with %d request(s) still in flight", left)


async def serve(settings: Settings, announce=print) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code."""
    from service.grpc.server import create_server
    from service.http.app import create_app

    authenticator = check_security_settings(settings)
    if authenticator is None:
        return 2
    metrics = ServiceMetrics()
    pipeline = build_pipeline(settings, metrics)
    await pipeline.start()
    grpc_server, grpc_port = await create_server(pipeline, settings, metrics, authenticator=authenticator)
    await grpc_server.start()
    app = create_app(pipeline, settings, metrics, authenticator=authenticator)
    http = _EmbeddedUvicorn(uvicorn.Config(app, host=settings.host, port=settings.http_port, log_config=None,
                                           lifespan="off", timeout_graceful_shutdown=settings.shutdown_grace_s,
                                           limit_concurrency=None, access_log=False,
                                           **uvicorn_tls_options(settings)))
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

    signals = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, signals.put_nowait, sig)
    await signals.get()

    log.info("draining", extra={"grace_s": settings.shutdown_grace_s})
    started = loop.time()
    interrupted = asyncio.Event()
    second_signal = asyncio.create_task(signals.get())
    second_signal.add_done_callback(lambda _: interrupted.set())
    await drain(pipeline, settings.shutdown_grace_s, interrupted)
    # Accepted requests are done (or out of time): stop both servers. What is left of the grace period
    # covers writing the last responses; anything still running after it is cut off.
    left = 0.0 if interrupted.is_set() else max(FINAL_WRITES_S, settings.shutdown_grace_s - (loop.time() - started))
    http.config.timeout_graceful_shutdown = left
    http.should_exit = True
    await asyncio.gather(grpc_server.stop(left), http_task, return_exceptions=True)
    second_signal.cancel()
    await pipeline.close()
    log.info("stopped")
    return 0
