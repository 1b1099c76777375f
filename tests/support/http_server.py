"""Serve an ASGI app with a real uvicorn on 127.0.0.1 and an OS-chosen port, in a background thread.

The socket is bound (port 0) and listening before uvicorn starts, so the port is known at once and a
request sent during start-up simply waits in the backlog: readiness is awaited through the app's health
endpoint with one request, never by sleeping or polling log lines.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import uvicorn

HOST = "127.0.0.1"


@dataclass
class RunningHttpServer:
    """A uvicorn serving in a thread of this process."""

    port: int
    server: uvicorn.Server
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)  # what the server thread raised, if anything

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.port}"


@contextlib.contextmanager
def serve_http(app, *, health_path: str = "/health/live", startup_timeout_s: float = 60.0,
               **uvicorn_options) -> Iterator[RunningHttpServer]:
    """Run ``app`` until the block ends; yields once ``health_path`` answered 200.

    ``uvicorn_options`` go to ``uvicorn.Config`` (defaults: no uvicorn logging config, no access log,
    5 s graceful shutdown). On exit the server stops and its thread is joined; a server that will not stop
    is an error, not a leaked thread.
    """
    options = {"log_config": None, "access_log": False, "timeout_graceful_shutdown": 5, "lifespan": "auto",
               **uvicorn_options}
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, **options))
    running = RunningHttpServer(port=port, server=server, thread=threading.Thread())

    def run() -> None:
        try:
            server.run(sockets=[listener])
        except BaseException as exc:  # noqa: BLE001 - reported to the test through ``errors``
            running.errors.append(exc)

    running.thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    running.thread.start()
    try:
        response = httpx.get(f"{running.base_url}{health_path}", timeout=startup_timeout_s)
        if response.status_code != 200 or running.errors:
            raise RuntimeError(f"server on port {port} did not come up: {health_path} answered "
                               f"{response.status_code}; thread errors: {running.errors}")
        yield running
    finally:
        server.should_exit = True
        running.thread.join(timeout=30)
        if running.thread.is_alive():
            server.force_exit = True
            running.thread.join(timeout=10)
        listener.close()
        if running.thread.is_alive():
            raise RuntimeError(f"uvicorn on port {port} did not stop")
