"""``python -m loadtests.bench [--quick] [--work DIR] [--docs DIR] [--key=value ...]``: run the benchmarks and
write docs/BENCHMARKS.md (``make bench``). ``--render-only`` rewrites the page from the last run's results.

Keys are the fields of :class:`loadtests.bench.config.BenchConfig`, e.g. ``--vqa_requests=64``,
``--seg_concurrency=1,4,16,32``, ``--sections=segmenter``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

from loadtests.bench.common import REPO_ROOT, Log
from loadtests.bench.config import BenchError, load_bench_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "runs" / "bench",
                        help="scratch folder: the random model, engine logs, every load run's report files")
    parser.add_argument("--docs", type=Path, default=REPO_ROOT / "docs", help="where BENCHMARKS.md is written")
    parser.add_argument("--quick", action="store_true", help="a few-minute smoke run (small sizes)")
    parser.add_argument("--render-only", action="store_true", help="re-render the page from WORK/results.json")
    parser.add_argument("--merge", action="store_true",
                        help="keep the sections of WORK/results.json that this run does not measure (re-measure one "
                             "part, e.g. --sections=segmenter, without losing the others)")
    return parser


def run_sections(config, work: Path, log: Log) -> dict:
    """Every selected section; a section that fails records why instead of stopping the others."""
    from loadtests.bench.flops import peak_estimate
    from loadtests.bench.vqa import environment_summary

    sections = [s.strip() for s in config.sections.split(",") if s.strip()]
    unknown = set(sections) - {"vqa", "accuracy", "segmenter"}
    if unknown:
        raise BenchError(f"unknown section(s) {', '.join(sorted(unknown))}; sections: vqa, accuracy, segmenter")
    results = {"config": config.to_dict(), "machine": peak_estimate(), "versions": environment_summary(),
               "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "load_average_start": ", ".join(f"{v:.2f}" for v in os.getloadavg())}
    started = time.monotonic()
    results["section_runs"] = {}
    for section in sections:
        section_started = time.monotonic()
        results["section_runs"][section] = {
            "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_average_start": ", ".join(f"{v:.2f}" for v in os.getloadavg()),
            "first_in_run": section == sections[0]}  # its start load is others' load, not this run's
        try:
            if section == "vqa":
                from loadtests.bench.vqa import run_vqa

                results["vqa"] = run_vqa(config, work, log)
            elif section == "accuracy":
                from loadtests.bench.vqa import run_accuracy

                results["accuracy"] = run_accuracy(config, work, log)
            else:
                from loadtests.bench.segmenter import run_segmenter

                results["segmenter"] = run_segmenter(config, work, log)
        except Exception as exc:  # noqa: BLE001 - keep the other sections' figures; the page says what failed
            log(f"section {section} failed: {exc}")
            results[section] = {"failed": f"{type(exc).__name__}: {exc}"[-3000:]}
        results["section_runs"][section].update(
            minutes=round((time.monotonic() - section_started) / 60, 1),
            load_average_end=", ".join(f"{v:.2f}" for v in os.getloadavg()))
        (work / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    results["minutes"] = (time.monotonic() - started) / 60
    results["load_average_end"] = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return results


def main(argv: list[str] | None = None) -> int:
    """Run (or re-render) and write the docs; exit 2 on a bad option."""
    args, extra = _parser().parse_known_args(argv)
    log = Log()
    try:
        config = load_bench_config(args.quick, extra)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    if args.render_only:
        results = json.loads((args.work / "results.json").read_text())
    else:
        previous_path = args.work / "results.json"
        previous = json.loads(previous_path.read_text()) if args.merge and previous_path.is_file() else {}
        results = run_sections(config, args.work, log)
        results["command"] = "python -m loadtests.bench" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
        for section in ("vqa", "accuracy", "segmenter"):
            if section not in results and section in previous:
                results[section] = previous[section]
                earlier = {"started": previous.get("started"), "load_average_start": previous.get("load_average_start")}
                results["section_runs"][section] = (previous.get("section_runs") or {}).get(section, earlier)
        (args.work / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    results.setdefault("command", "python -m loadtests.bench")
    results.setdefault("minutes", 0.0)
    from loadtests.bench.docs import render

    page = render(results, args.docs)
    log(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
