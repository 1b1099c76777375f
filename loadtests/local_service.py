"""Start the service (``python -m service``) on free loopback ports for a run, and stop it afterwards.

The service prints one JSON line with the ports it bound; readiness is then awaited through its health
endpoint (``/health/ready``), or, for a segmentation-only load against a repository without a VQA model,
through ``/v1/models`` reporting every segmenter ready. Stopping sends SIGTERM, so the service drains.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
POLL_INTERVAL_S = 0.25


class ServiceStartError(RuntimeError):
    """The service did not report its ports or did not become ready; carries the end of its log."""


@dataclass
class LocalService:
    """A service process started by the harness."""

    process: subprocess.Popen
    http_port: int
    grpc_port: int
    log_tail: deque = field(default_factory=lambda: deque(maxlen=200))

    @property
    def pid(self) -> int:
        """The service's process id (its CPU and memory are measured through it)."""
        return self.process.pid

    def address(self, target: str) -> str:
        """``127.0.0.1:<port>`` of the front door ``target`` uses."""
        return f"127.0.0.1:{self.grpc_port if target == 'grpc' else self.http_port}"

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP server."""
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (the service drains), wait, kill after ``timeout``; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def service_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """vLLM on a small CPU machine: 1 GiB KV cache (the default sizes it from NUMA memory), offline hub."""
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def start_service(args: list[str], *, wait_for: str = "ready", timeout: float = 300.0,
                  env: dict[str, str] | None = None) -> LocalService:
    """Start ``python -m service --host 127.0.0.1 --http-port 0 --grpc-port 0 ARGS``.

    ``wait_for``: ``ready`` (``/health/ready`` answers 200), ``segmenters`` (every segmentation model listed
    by ``/v1/models`` is ready; the service as a whole may lack a VQA model) or ``ports`` (no wait).
    """
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", *args]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=service_environment(env), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    log_tail: deque = deque(maxlen=200)
    threading.Thread(target=lambda: log_tail.extend(iter(process.stderr.readline, "")), daemon=True).start()
    ports: dict = {}

    def read_ports() -> None:
        for line in iter(process.stdout.readline, ""):
            if line.startswith("{") and "http_port" in line:
                ports.update(json.loads(line))
                break
        for _ in iter(process.stdout.readline, ""):  # keep draining so the pipe never fills
            pass

    threading.Thread(target=read_ports, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ports:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise ServiceStartError("the service did not report its ports:\n" + "".join(list(log_tail)[-30:]))
        time.sleep(POLL_INTERVAL_S)  # waiting on the ports line its reader thread fills
    service = LocalService(process, ports["http_port"], ports["grpc_port"], log_tail)
    if wait_for != "ports":
        try:
            wait_until_ready(service.http_url, wait_for, deadline, process)
        except ServiceStartError as exc:
            service.stop()
            raise ServiceStartError(f"{exc}\n" + "".join(list(log_tail)[-30:])) from None
    return service


def is_ready(http_url: str, wait_for: str) -> bool:
    """One readiness probe (see :func:`start_service`)."""
    try:
        if wait_for == "segmenters":
            models = httpx.get(f"{http_url}/v1/models", timeout=5).json()["data"]
            segmenters = [m for m in models if m.get("kind") == "segmentation"]
            return bool(segmenters) and all(m.get("ready") for m in segmenters)
        return httpx.get(f"{http_url}/health/ready", timeout=5).status_code == 200
    except (httpx.HTTPError, ValueError, KeyError):
        return False


def wait_until_ready(http_url: str, wait_for: str, deadline: float, process: subprocess.Popen | None = None) -> None:
    """Poll the health endpoint until ready; ServiceStartError when the process exits or time runs out."""
    while not is_ready(http_url, wait_for):
        if process is not None and process.poll() is not None:
            raise ServiceStartError(f"the service exited with {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise ServiceStartError("the service did not become ready in time")
        time.sleep(POLL_INTERVAL_S)
