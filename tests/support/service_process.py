"""Run the real service (``python -m service``) as a subprocess on 127.0.0.1:0 for integration tests.

The process prints one JSON line with the ports it bound; the helper then waits on ``/health/ready``
(never on sleeps or log lines) and stops it with SIGTERM, returning the exit code so tests can check a
clean shutdown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED_REPOSITORY = REPO_ROOT / "model_repository"
# Small admission limits so a burst of requests reaches OVERLOADED in a test; one request at a time
# elsewhere never comes close.
SERVICE_ARGS = ["--vqa-max-running", "2", "--vqa-max-waiting", "2", "--vllm-threads", "2", "--max-tokens-cap", "512"]


def combined_repository(medclm_repository: Path, folder: Path, with_medclm: bool = True) -> Path:
    """A repository with the committed organ segmenters and (optionally) the test's ``medclm``, by symlinks."""
    folder.mkdir(parents=True, exist_ok=True)
    for model in sorted(COMMITTED_REPOSITORY.glob("organ_seg_*")):
        (folder / model.name).symlink_to(model)
    if with_medclm:
        (folder / "medclm").symlink_to(medclm_repository / "medclm")
    return folder


@dataclass
class ServiceProcess:
    """A running service: its process, ports and captured stderr (the JSON logs)."""

    process: subprocess.Popen
    http_port: int
    grpc_port: int
    log_lines: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP server."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        """host:port of the gRPC server."""
        return f"127.0.0.1:{self.grpc_port}"

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait, return the exit code (kill after ``timeout``)."""
        return stop_process(self.process, timeout)


def stop_process(process: subprocess.Popen, timeout: float) -> int:
    """SIGTERM a test's server process, wait, SIGKILL after ``timeout``; its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def service_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test environment for the service: small vLLM KV cache, both cores, offline hub."""
    env = dict(os.environ)
    env.update({"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def start_service(args: list[str], env: dict[str, str] | None = None, ready: bool = True,
                  timeout: float = 240.0) -> ServiceProcess:
    """Start ``python -m service --host 127.0.0.1 --http-port 0 --grpc-port 0 ARGS`` and wait for its ports
    (and for readiness unless ``ready`` is False)."""
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", *args]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=service_environment(env), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    log_lines: list[str] = []
    threading.Thread(target=lambda: log_lines.extend(iter(process.stderr.readline, "")), daemon=True).start()
    ports: dict = {}

    def read_ports():
        for line in iter(process.stdout.readline, ""):
            if line.startswith("{") and "http_port" in line:
                ports.update(json.loads(line))
                return

    reader = threading.Thread(target=read_ports, daemon=True)
    reader.start()
    reader.join(timeout)
    if not ports:
        process.kill()
        raise RuntimeError("the service did not report its ports; stderr:\n" + "".join(log_lines[-40:]))
    service = ServiceProcess(process, ports["http_port"], ports["grpc_port"], log_lines)
    if ready:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError("the service exited; stderr:\n" + "".join(log_lines[-40:]))
            try:
                if httpx.get(f"{service.http_url}/health/ready", timeout=5).status_code == 200:
                    return service
            except httpx.HTTPError:
                pass
            time.sleep(0.2)  # polling the health endpoint, not waiting for a guess
        service.stop()
        raise RuntimeError("the service did not become ready; stderr:\n" + "".join(log_lines[-40:]))
    return service
