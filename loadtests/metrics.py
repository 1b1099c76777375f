"""What one request measured, and the summary of a load level: throughput, latency percentiles, time to first
token, inter-token latency, errors by status code, goodput against SLOs, and CPU / memory of both sides.

Definitions follow vLLM's ``benchmark_serving``: TTFT is the time from sending a request to its first
generated text; ITL the gaps between successive streamed chunks; TPOT the time per output token after the
first, ``(e2e - ttft) / (output_tokens - 1)``; goodput the requests per second that met every given SLO.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (50, 90, 95, 99)
SAMPLE_INTERVAL_S = 0.1


@dataclass
class RequestRecord:
    """One request as the client saw it (times from ``time.perf_counter``, in seconds)."""

    kind: str
    start: float
    end: float = 0.0
    ok: bool = False
    status: str = ""  # "OK" (gRPC) / "200" (HTTP), or the error: gRPC code name, HTTP status, "client:<what>"
    ttft: float | None = None  # seconds from start to the first text (streams only)
    chunk_times: list[float] = field(default_factory=list)  # arrival of each streamed text chunk
    prompt_tokens: int = 0
    output_tokens: int = 0
    server: dict[str, float] = field(default_factory=dict)  # the service's own timings (ms), when it sends them
    error: str = ""

    @property
    def latency(self) -> float:
        """End-to-end seconds."""
        return self.end - self.start

    def itls(self) -> list[float]:
        """Gaps between successive streamed chunks (seconds)."""
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:])]


def distribution(values_s: list[float], name: str) -> dict[str, float | None]:
    """``mean_/median_/std_/pXX_<name>_ms`` of values given in seconds (None when there are none)."""
    keys = [f"mean_{name}_ms", f"median_{name}_ms", f"std_{name}_ms"] + [f"p{p}_{name}_ms" for p in PERCENTILES]
    if not values_s:
        return dict.fromkeys(keys)
    ms = np.asarray(values_s, dtype=float) * 1000.0
    out = {keys[0]: float(ms.mean()), keys[1]: float(np.median(ms)), keys[2]: float(ms.std())}
    out.update({f"p{p}_{name}_ms": float(np.percentile(ms, p)) for p in PERCENTILES})
    return out


def meets_slo(record: RequestRecord, slo_ttft_ms: float | None, slo_e2e_ms: float | None) -> bool:
    """A successful request within every given SLO (a TTFT SLO needs a measured TTFT)."""
    if not record.ok:
        return False
    if slo_ttft_ms is not None and (record.ttft is None or record.ttft * 1000 > slo_ttft_ms):
        return False
    return slo_e2e_ms is None or record.latency * 1000 <= slo_e2e_ms


def summarise(records: list[RequestRecord], wall_s: float, slo_ttft_ms: float | None = None,
              slo_e2e_ms: float | None = None) -> dict:
    """The level's figures (vLLM benchmark names where vLLM has one; see the module docstring)."""
    done = [r for r in records if r.ok]
    wall_s = max(wall_s, 1e-9)
    output_tokens = sum(r.output_tokens for r in done)
    input_tokens = sum(r.prompt_tokens for r in done)
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in done
             if r.ttft is not None and r.output_tokens > 1]
    summary = {
        "duration": wall_s,
        "num_prompts": len(records),
        "completed": len(done),
        "failed": len(records) - len(done),
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": len(done) / wall_s,
        "request_goodput": sum(meets_slo(r, slo_ttft_ms, slo_e2e_ms) for r in records) / wall_s,
        "output_throughput": output_tokens / wall_s,
        "total_token_throughput": (input_tokens + output_tokens) / wall_s,
        "errors_by_code": dict(sorted(Counter(r.status for r in records if not r.ok).items())),
        "slo_ttft_ms": slo_ttft_ms,
        "slo_e2e_ms": slo_e2e_ms,
    }
    summary.update(distribution([r.ttft for r in done if r.ttft is not None], "ttft"))
    summary.update(distribution(tpots, "tpot"))
    summary.update(distribution([gap for r in done for gap in r.itls()], "itl"))
    summary.update(distribution([r.latency for r in done], "e2el"))
    summary["server_timings_ms"] = mean_server_timings(done)
    summary["by_kind"] = {kind: {"completed": sum(r.ok for r in rs), "failed": sum(not r.ok for r in rs),
                                 **distribution([r.latency for r in rs if r.ok], "e2el")}
                          for kind, rs in _group(records).items()}
    return summary


def mean_server_timings(records: list[RequestRecord]) -> dict[str, float]:
    """Mean of each server timing (queue, preprocess, engine, ...) over the records that carry it."""
    keys = sorted({k for r in records for k in r.server})
    return {k: float(np.mean([r.server[k] for r in records if k in r.server])) for k in keys}


def _group(records: list[RequestRecord]) -> dict[str, list[RequestRecord]]:
    groups: dict[str, list[RequestRecord]] = {}
    for record in records:
        groups.setdefault(record.kind, []).append(record)
    return groups


# --- CPU and memory -----------------------------------------------------------------------------------------

def _tree(pid: int):
    """The process and its descendants (the service's vLLM engine core runs in a child process)."""
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


class ResourceMonitor:
    """CPU time and peak resident memory of the client (this process) and, when its pid is known, the
    server process tree, sampled every 0.1 s in a thread between :meth:`start` and :meth:`stop`.

    CPU is reported in percent of one core over the wall time (200 % = both cores of a 2-core machine busy).
    """

    def __init__(self, server_pid: int | None = None, interval_s: float = SAMPLE_INTERVAL_S):
        self.server_pid = server_pid
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server_cpu: dict[int, tuple[float, float]] = {}  # pid → (cpu seconds at first sight, latest)
        self._server_peak = 0
        self._client_peak = 0
        self._client_cpu0 = 0.0
        self._wall0 = 0.0
        self.result: dict = {}

    def _sample(self) -> None:
        import psutil

        try:
            self._client_peak = max(self._client_peak, psutil.Process(os.getpid()).memory_info().rss)
        except psutil.Error:
            pass
        if self.server_pid is None:
            return
        rss = 0
        try:
            processes = _tree(self.server_pid)
        except psutil.Error:
            return
        for process in processes:
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    rss += process.memory_info().rss
            except psutil.Error:
                continue
            cpu = times.user + times.system
            first, _ = self._server_cpu.get(process.pid, (cpu, cpu))
            self._server_cpu[process.pid] = (first, cpu)
        self._server_peak = max(self._server_peak, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> "ResourceMonitor":
        """Take the baselines and start sampling."""
        self._wall0 = time.perf_counter()
        times = os.times()
        self._client_cpu0 = times.user + times.system
        self._sample()
        self._thread = threading.Thread(target=self._run, name="resource-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict:
        """Stop sampling; returns (and keeps in ``result``) the CPU percentages and peak RSS in MB."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        wall = max(time.perf_counter() - self._wall0, 1e-9)
        times = os.times()
        client_cpu = times.user + times.system - self._client_cpu0
        self.result = {"client_cpu_percent": 100.0 * client_cpu / wall,
                       "client_peak_rss_mb": self._client_peak / 1e6,
                       "server_cpu_percent": None, "server_peak_rss_mb": None}
        if self.server_pid is not None and self._server_cpu:
            server_cpu = sum(last - first for first, last in self._server_cpu.values())
            self.result.update(server_cpu_percent=100.0 * server_cpu / wall,
                               server_peak_rss_mb=self._server_peak / 1e6)
        return self.result
