"""One load-test run: for each level (a concurrency, or a Poisson rate) warm up, send the load, measure the
client and server resources, and summarise; then write the report files.

Used by the CLI (``python -m loadtests run``) and by the benchmarks, which call :func:`run_levels` with
their own clients (e.g. a bare Triton server, which is not one of the CLI's targets).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.clients import TARGETS, Client, make_client
from loadtests.harness import LevelRun, closed_loop, open_loop, warm_up
from loadtests.inputs import InputImage
from loadtests.metrics import ResourceMonitor, summarise
from loadtests.report import write_report
from loadtests.scenarios import RequestPlan

PER_REQUEST_LISTS = 2000  # per-request arrays kept in the JSON per level (vLLM keeps them all; bounded here)


@dataclass
class LoadOptions:
    """How to load one target (see ``python -m loadtests run --help`` for each field)."""

    target: str
    address: str
    scenario: str
    inputs: list[InputImage]
    concurrency: list[int] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    duration: float | None = None
    requests: int | None = None
    warmup: int = 4
    timeout: float = 120.0
    max_in_flight: int = 256
    seed: int = 0
    max_tokens: int = 64
    brief: bool = False
    precision: str = ""
    mask_format: str = "rle"
    mix: dict[str, int] | None = None
    invalid_share: float = 0.0
    slo_ttft_ms: float | None = None
    slo_e2e_ms: float | None = None
    server_pid: int | None = None

    def plan(self) -> RequestPlan:
        """A fresh request plan (each level starts from the first request, so levels send the same mix)."""
        return RequestPlan.for_scenario(self.scenario, self.inputs, self.mix, max_tokens=self.max_tokens,
                                        brief=self.brief, precision=self.precision, invalid_share=self.invalid_share)


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); ValueError when it is neither."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def listening_pid(port: int) -> int | None:
    """The pid of the local process listening on TCP ``port``, when the OS lets us see it."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid
    except Exception:  # noqa: BLE001 - not allowed or not supported: server resources are then not reported
        return None
    return None


def _level_result(options: LoadOptions, run: LevelRun, resources: dict, concurrency: int | None,
                  rate: float | None) -> dict:
    level = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S"),
             "backend": f"medclm-{options.target}" if options.target in TARGETS else options.target,
             "endpoint_type": options.target, "label": options.scenario,
             "max_concurrency": concurrency, "request_rate": rate if rate is not None else "inf",
             "burstiness": 1.0}
    level.update(summarise(run.records, run.wall_s, options.slo_ttft_ms, options.slo_e2e_ms))
    level.update(resources)
    done = [r for r in run.records if r.ok][:PER_REQUEST_LISTS]
    level.update({"input_lens": [r.prompt_tokens for r in done], "output_lens": [r.output_tokens for r in done],
                  "ttfts": [r.ttft for r in done], "itls": [r.itls() for r in done],
                  "e2els": [r.latency for r in done],
                  "errors": [f"{r.status}: {r.error}"[:300] for r in run.records if not r.ok][:PER_REQUEST_LISTS]})
    return level


async def run_levels(options: LoadOptions, client: Client | None = None, progress=print) -> list[dict]:
    """Every level of ``options`` against ``client`` (default: the client of ``options.target``)."""
    if bool(options.concurrency) == bool(options.rates):
        raise ValueError("give either concurrency levels or rates")
    widest = max(options.concurrency or [options.max_in_flight])
    own_client = client is None
    client = client or make_client(options.target, options.address, widest, options.mask_format)
    levels = []
    try:
        for concurrency, rate in ([(c, None) for c in options.concurrency] + [(None, r) for r in options.rates]):
            await warm_up(client, options.plan(), options.warmup, concurrency or 4, options.timeout)
            monitor = ResourceMonitor(options.server_pid).start()
            try:
                if concurrency is not None:
                    run = await closed_loop(client, options.plan(), concurrency, duration=options.duration,
                                            requests=options.requests, timeout=options.timeout)
                else:
                    run = await open_loop(client, options.plan(), rate, duration=options.duration,
                                          requests=options.requests, timeout=options.timeout,
                                          max_in_flight=options.max_in_flight, seed=options.seed)
            finally:
                resources = monitor.stop()
            levels.append(_level_result(options, run, resources, concurrency, rate))
            if progress:
                level = levels[-1]
                progress(f"{options.target} {options.scenario} "
                         f"{'c=' + str(concurrency) if concurrency is not None else 'rate=' + str(rate)}: "
                         f"{level['completed']} ok, {level['failed']} failed, "
                         f"{level['request_throughput']:.2f} req/s, p50 {level['median_e2el_ms'] or 0:.1f} ms")
    finally:
        if own_client:
            await client.close()
    return levels


def run_info(options: LoadOptions, **extra) -> dict:
    """The run's settings, for the JSON report."""
    return {"target": options.target, "address": options.address, "scenario": options.scenario,
            "mode": "closed" if options.concurrency else "open (Poisson)",
            "concurrency": options.concurrency, "rates": options.rates, "duration_s": options.duration,
            "requests_per_level": options.requests, "warmup_requests": options.warmup, "timeout_s": options.timeout,
            "max_tokens": options.max_tokens, "brief": options.brief, "precision": options.precision,
            "mix": options.mix, "invalid_share": options.invalid_share, "inputs": len(options.inputs),
            "input_names": [i.name for i in options.inputs][:50], "slo_ttft_ms": options.slo_ttft_ms,
            "slo_e2e_ms": options.slo_e2e_ms, "server_pid_measured": options.server_pid is not None, **extra}


def run_and_report(options: LoadOptions, out: Path, plots: bool = True, progress=print,
                   **extra) -> tuple[list[dict], list[Path]]:
    """Run every level and write the report into ``out``; returns (levels, written files)."""
    levels = asyncio.run(run_levels(options, progress=progress))
    return levels, write_report(run_info(options, **extra), levels, Path(out), plots)
