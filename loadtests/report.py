"""Report files of a run: a CSV in perf_analyzer's column style, a JSON in vLLM ``benchmark_serving``'s
style, and the plots.

- ``results.csv``: one row per level. perf_analyzer's columns come first, in its order and its unit
  (microseconds): ``Concurrency`` (or ``Request Rate``), ``Inferences/Second``, the latency breakdown, then
  ``p50/p90/p95/p99 latency`` and ``Avg latency``. The service reports its own timings, so the server columns
  are filled from them (queue → Server Queue, decode and preprocessing → Server Compute Input, engine →
  Server Compute Infer, the rest of the server's total → Server Compute Output) and Network+Server Send/Recv
  is the client's latency minus the server's total. Client Send / Client Recv are not measured apart from the
  end-to-end time and stay 0. Columns after perf_analyzer's carry what it does not have (tokens, TTFT, ITL,
  goodput, errors, CPU, memory).
- ``results.json``: the run's settings and one vLLM-style result per level (``request_throughput``,
  ``output_throughput``, ``mean/median/std/pXX`` of ``ttft``, ``tpot``, ``itl``, ``e2el`` in ms, ``ttfts``,
  ``itls``, ``e2els``, ``output_lens``, ``errors``) plus ``errors_by_code``, goodput and resources.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

PERF_ANALYZER_COLUMNS = ("Inferences/Second", "Client Send", "Network+Server Send/Recv", "Server Queue",
                         "Server Compute Input", "Server Compute Infer", "Server Compute Output", "Client Recv",
                         "p50 latency", "p90 latency", "p95 latency", "p99 latency", "Avg latency")
EXTRA_COLUMNS = ("Completed", "Failed", "Errors", "Output Tokens/Second", "Goodput", "TTFT p50", "TTFT p99",
                 "ITL p50", "ITL p99", "TPOT p50", "Client CPU %", "Client Peak RSS MB", "Server CPU %",
                 "Server Peak RSS MB")


def _us(ms: float | None) -> int:
    return 0 if ms is None else int(round(ms * 1000))


def _fixed(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def csv_row(level: dict) -> dict[str, object]:
    """One perf_analyzer-style row of a level's result (latencies in microseconds)."""
    server = level.get("server_timings_ms") or {}
    total = server.get("total_ms")
    parts = [server.get(k) or 0.0 for k in ("queue_ms", "preprocess_ms", "engine_ms")]
    avg = level.get("mean_e2el_ms")
    output = (total - sum(parts)) if total is not None else None
    network = (avg - total) if (avg is not None and total is not None) else None
    row: dict[str, object] = {
        "Concurrency" if level.get("max_concurrency") is not None else "Request Rate":
            level.get("max_concurrency") if level.get("max_concurrency") is not None else level.get("request_rate"),
        "Inferences/Second": _fixed(level["request_throughput"], 3),
        "Client Send": 0, "Network+Server Send/Recv": _us(network), "Server Queue": _us(server.get("queue_ms")),
        "Server Compute Input": _us(server.get("preprocess_ms")), "Server Compute Infer": _us(server.get("engine_ms")),
        "Server Compute Output": _us(output), "Client Recv": 0,
        "p50 latency": _us(level.get("median_e2el_ms")), "p90 latency": _us(level.get("p90_e2el_ms")),
        "p95 latency": _us(level.get("p95_e2el_ms")), "p99 latency": _us(level.get("p99_e2el_ms")),
        "Avg latency": _us(avg),
        "Completed": level["completed"], "Failed": level["failed"],
        "Errors": ";".join(f"{code}={count}" for code, count in level["errors_by_code"].items()),
        "Output Tokens/Second": _fixed(level["output_throughput"]),
        "Goodput": _fixed(level["request_goodput"], 3),
        "TTFT p50": _us(level.get("median_ttft_ms")), "TTFT p99": _us(level.get("p99_ttft_ms")),
        "ITL p50": _us(level.get("median_itl_ms")), "ITL p99": _us(level.get("p99_itl_ms")),
        "TPOT p50": _us(level.get("median_tpot_ms")),
        "Client CPU %": _fixed(level.get("client_cpu_percent")),
        "Client Peak RSS MB": _fixed(level.get("client_peak_rss_mb")),
        "Server CPU %": _fixed(level.get("server_cpu_percent")),
        "Server Peak RSS MB": _fixed(level.get("server_peak_rss_mb")),
    }
    return row


def write_csv(levels: list[dict], path: Path) -> Path:
    """``results.csv`` (see the module docstring)."""
    rows = [csv_row(level) for level in levels]
    first = next(iter(rows[0])) if rows else "Concurrency"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[first, *PERF_ANALYZER_COLUMNS, *EXTRA_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_json(run: dict, levels: list[dict], path: Path) -> Path:
    """``results.json``: ``{"run": settings, "results": [one vLLM-style dict per level]}``."""
    path.write_text(json.dumps({"run": run, "results": levels}, indent=2) + "\n")
    return path


def write_report(run: dict, levels: list[dict], out: Path, plots: bool = True) -> list[Path]:
    """Write the CSV, the JSON and (unless ``plots`` is False) the PNG plots into ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [write_csv(levels, out / "results.csv"), write_json(run, levels, out / "results.json")]
    if plots and levels:
        from loadtests.plots import plot_latency, plot_throughput

        title = f"{run.get('target')} {run.get('scenario')}"
        written += [plot_latency(levels, out / "latency.png", title),
                    plot_throughput(levels, out / "throughput.png", title)]
    return written


def format_summary(levels: list[dict]) -> str:
    """A short table for the terminal."""
    lines = [f"{'level':>10} {'req/s':>8} {'tok/s':>8} {'p50 ms':>9} {'p99 ms':>9} {'TTFT p50':>9} "
             f"{'errors':>8}  codes"]
    for level in levels:
        name = (f"c={level['max_concurrency']}" if level.get("max_concurrency") is not None
                else f"r={level['request_rate']}")
        codes = ", ".join(f"{k}:{v}" for k, v in level["errors_by_code"].items())
        lines.append(f"{name:>10} {level['request_throughput']:8.2f} {level['output_throughput']:8.1f} "
                     f"{_fixed(level.get('median_e2el_ms')):>9} {_fixed(level.get('p99_e2el_ms')):>9} "
                     f"{_fixed(level.get('median_ttft_ms')):>9} {level['failed']:8d}  {codes}")
    return "\n".join(lines)
