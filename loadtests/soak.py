"""``python -m loadtests.soak``: overload the service at twice its measured capacity for a bounded time.

1. Start the service on free loopback ports (``--service-args`` are passed to it).
2. Capacity: closed-loop levels (``--capacity-concurrency``) of the scenario; capacity is the highest
   request throughput any level reached.
3. Soak: Poisson arrivals at ``--factor`` x capacity for ``--duration`` seconds (default 2 x for 300 s).
4. Verdict: every request was answered or refused by design (gRPC RESOURCE_EXHAUSTED / UNAVAILABLE, HTTP
   429 / 503); nothing timed out, failed otherwise or was lost; the process is alive and ready afterwards;
   the resident memory of its process tree grew by less than ``--max-rss-growth`` (10 %) over the soak, from
   its level once the soak load has settled (``--settle`` seconds into the soak: deeper queues legitimately
   hold more buffers than the capacity levels did) to the end. Growth from the capacity baseline is reported
   too.

Writes the harness's reports under ``OUT/capacity`` and ``OUT/soak``, the verdict with its figures and the
RSS timeline to ``OUT/soak.json`` and the timeline as ``OUT/soak_rss.png``; exits 1 when the verdict fails.
Only loopback: the service is started here.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import threading
import time
from pathlib import Path

import httpx

from loadtests.inputs import phantom_inputs
from loadtests.local_service import start_service
from loadtests.run import LoadOptions, run_and_report

BY_DESIGN = {"grpc": {"RESOURCE_EXHAUSTED", "UNAVAILABLE"}, "http": {"429", "503"}, "openai": {"429", "503"}}
RSS_SAMPLE_S = 2.0


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its children (vLLM's engine core is a child)."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total


class RssSampler:
    """Samples :func:`tree_rss` every few seconds in a thread; keeps the first, last and highest values."""

    def __init__(self, pid: int):
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), tree_rss(self.pid)))
            self._stop.wait(RSS_SAMPLE_S)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.monotonic(), tree_rss(self.pid)))


def rss_at(samples: list[tuple[float, int]], seconds: float) -> int:
    """The first RSS sample taken ``seconds`` or more after the first one (the last sample if none is)."""
    start = samples[0][0]
    return next((rss for at, rss in samples if at - start >= seconds), samples[-1][1])


def plot_rss(samples: list[tuple[float, int]], settle_s: float, path: Path) -> Path:
    """RSS of the service's process tree against soak time, with the settled baseline marked."""
    from loadtests.plots import pyplot

    plt = pyplot()
    start = samples[0][0]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([at - start for at, _ in samples], [rss / 2**20 for _, rss in samples], "-")
    ax.axvline(settle_s, linestyle=":", color="grey", label=f"settled baseline ({settle_s:g} s)")
    ax.set_xlabel("soak time (s)")
    ax.set_ylabel("RSS of the service's processes (MiB)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def verdict(level: dict, target: str, rss_start: int, rss_end: int, alive: bool, ready: bool,
            max_rss_growth: float) -> dict:
    """The soak's figures and whether each condition holds."""
    errors = level.get("errors_by_code", {})
    refused = sum(n for code, n in errors.items() if code in BY_DESIGN[target])
    other = {code: n for code, n in errors.items() if code not in BY_DESIGN[target]}
    growth = (rss_end - rss_start) / rss_start if rss_start else 0.0
    checks = {"only_refusals_by_design": not other,
              "every_request_answered": level["completed"] + refused == level["num_prompts"],
              "process_alive": alive, "ready_afterwards": ready,
              "rss_growth_below_limit": growth < max_rss_growth}
    return {"requests": level["num_prompts"], "completed": level["completed"], "refused_by_design": refused,
            "other_failures": other, "rss_start_mib": rss_start / 2**20, "rss_end_mib": rss_end / 2**20,
            "rss_growth": growth, "checks": checks, "passed": all(checks.values())}


def build_parser() -> argparse.ArgumentParser:
    """The soak's options."""
    parser = argparse.ArgumentParser(prog="python -m loadtests.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--target", default="grpc", choices=sorted(BY_DESIGN))
    parser.add_argument("--scenario", default="mixed")
    parser.add_argument("--capacity-concurrency", default="4,16", help="closed-loop levels to find the capacity")
    parser.add_argument("--capacity-duration", type=float, default=30.0, help="seconds per capacity level")
    parser.add_argument("--factor", type=float, default=2.0, help="soak rate = factor x capacity")
    parser.add_argument("--duration", type=float, default=300.0, help="soak seconds")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=900.0, help="client seconds per request")
    parser.add_argument("--max-rss-growth", type=float, default=0.10)
    parser.add_argument("--settle", type=float, default=60.0,
                        help="soak seconds before the RSS baseline is taken")
    parser.add_argument("--service-args", default="", help="extra flags for the service")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Start the service, measure capacity, soak, write the verdict."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    inputs = phantom_inputs(8, seed=1)
    service = start_service(shlex.split(args.service_args), wait_for="ready")
    try:
        address = service.address(args.target)

        def options(**load) -> LoadOptions:
            return LoadOptions(target=args.target, address=address, scenario=args.scenario, inputs=inputs,
                               max_tokens=args.max_tokens, timeout=args.timeout, max_in_flight=100_000,
                               server_pid=service.pid, **load)

        levels = [int(c) for c in args.capacity_concurrency.split(",")]
        capacity_levels, _ = run_and_report(options(concurrency=levels, duration=args.capacity_duration),
                                            out / "capacity", plots=False, progress=lambda line: None)
        capacity = max(level["request_throughput"] for level in capacity_levels)
        rate = args.factor * capacity
        print(f"capacity {capacity:.2f} req/s; soaking at {rate:.2f} req/s for {args.duration:.0f} s",
              file=sys.stderr)
        rss_capacity = tree_rss(service.pid)
        with RssSampler(service.pid) as sampler:
            soak_levels, _ = run_and_report(options(rates=[rate], duration=args.duration, warmup=0), out / "soak",
                                            plots=False, progress=lambda line: None)
        alive = service.process.poll() is None
        try:
            ready = httpx.get(f"{service.http_url}/health/ready", timeout=10).status_code == 200
        except httpx.HTTPError:
            ready = False
        samples = sampler.samples
        result = verdict(soak_levels[0], args.target, rss_at(samples, args.settle), samples[-1][1], alive, ready,
                         args.max_rss_growth)
        result.update(settle_s=args.settle, rss_after_capacity_mib=rss_capacity / 2**20,
                      rss_growth_from_capacity=(samples[-1][1] - rss_capacity) / rss_capacity,
                      rss_timeline=[[round(at - samples[0][0], 1), round(rss / 2**20, 1)] for at, rss in samples],
                      target=args.target, scenario=args.scenario, capacity_rps=capacity, rate_rps=rate,
                      duration_s=args.duration, rss_peak_mib=max(s for _, s in sampler.samples) / 2**20,
                      p50_e2el_ms=soak_levels[0].get("median_e2el_ms"), p99_e2el_ms=soak_levels[0].get("p99_e2el_ms"))
    finally:
        exit_code = service.stop()
    result["exit_code_after_sigterm"] = exit_code
    result["checks"]["clean_exit"] = exit_code == 0
    result["passed"] = all(result["checks"].values())
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    plot_rss([(at, mib * 2**20) for at, mib in result["rss_timeline"]], args.settle, out / "soak_rss.png")
    print(json.dumps({k: v for k, v in result.items() if k != "rss_timeline"}, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
