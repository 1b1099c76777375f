"""``python -m loadtests run``: load the service over gRPC, HTTP or the OpenAI route and write the report.

Examples:
    python -m loadtests run --target grpc --scenario ask --concurrency 1,4,16 --duration 30 --out runs/load
    python -m loadtests run --target http --address 127.0.0.1:8000 --scenario segment --rate 5,10 \\
        --requests 200 --out runs/load-http
    python -m loadtests run --target openai --scenario ask-stream --concurrency 4 --requests 32 \\
        --images my_pngs/ --slo-ttft-ms 500 --out runs/openai

Without ``--address`` the service is started on free loopback ports (``--service-args`` are passed to it) and
stopped afterwards. Only loopback addresses are loaded unless ``--allow-remote`` is given.
``python -m loadtests bench`` regenerates docs/BENCHMARKS.md (see loadtests/bench).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from loadtests.clients import TARGET_KINDS, TARGETS
from loadtests.inputs import InputError, dataset_inputs, folder_inputs, phantom_inputs
from loadtests.scenarios import SCENARIOS, parse_mix


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be positive integers")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError("rates must be positive")
    return values


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be positive")
        return value
    return parse


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    """The options of ``run``."""
    run.add_argument("--target", required=True, choices=TARGETS, help="front door to load")
    run.add_argument("--address", help="HOST:PORT of the target (gRPC port for grpc, HTTP port otherwise); "
                                       "default: start the service on free loopback ports")
    run.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    load = run.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=_int_list, help="closed loop: comma-separated levels, e.g. 1,4,16,32")
    load.add_argument("--rate", type=_float_list, help="open loop: Poisson arrivals, requests/s (comma-separated)")
    stop = run.add_mutually_exclusive_group(required=True)
    stop.add_argument("--duration", type=_positive(float), help="seconds per level")
    stop.add_argument("--requests", type=_positive(int), help="requests per level")
    run.add_argument("--out", type=Path, required=True, help="folder for results.csv, results.json and the plots")
    run.add_argument("--warmup", type=int, default=4, help="discarded requests before each level")
    run.add_argument("--timeout", type=_positive(float), default=120.0, help="seconds per request")
    run.add_argument("--max-in-flight", type=_positive(int), default=256,
                     help="open loop: arrivals beyond this many running requests are recorded as client:overflow")
    run.add_argument("--seed", type=int, default=0, help="Poisson arrivals and phantom generation")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--images", type=Path, help="folder of PNG/JPEG/DICOM files to send (default: phantoms)")
    source.add_argument("--dataset", type=Path, help="a dataset built by python -m training.data (images + questions)")
    run.add_argument("--inputs", type=_positive(int), default=8, help="how many distinct images to cycle through")
    run.add_argument("--image-side", type=int, help="resize phantom/dataset images to SIDE x SIDE")
    run.add_argument("--question", action="append", help="question for --images (repeatable)")
    run.add_argument("--modality", default="", choices=("", "ct", "cxr"), help="modality hint for --images")
    run.add_argument("--max-tokens", type=_positive(int), default=64, help="tokens to generate per question")
    run.add_argument("--brief", action="store_true", help="ask for the answer alone (no reasoning)")
    run.add_argument("--precision", default="", help="precision variant to request (fp32, bf16, int8, fp16)")
    run.add_argument("--mask-format", default="rle", choices=("rle", "png"), help="segmentation masks")
    run.add_argument("--mix", help="request kinds of the mixed scenario, e.g. ask-stream=1,segment=3")
    run.add_argument("--invalid-share", type=float, default=0.0,
                     help="share of requests sent with bytes that are no image (the service must refuse them)")
    run.add_argument("--slo-ttft-ms", type=_positive(float), help="goodput SLO on time to first token")
    run.add_argument("--slo-e2e-ms", type=_positive(float), help="goodput SLO on end-to-end latency")
    run.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --address")
    run.add_argument("--server-pid", type=int, help="pid of the server to measure (found from the port when local)")
    run.add_argument("--service-args", default="", help="extra flags for the service this run starts, "
                                                        "e.g. \"--no-batching --model-repository R\"")
    run.add_argument("--no-plots", action="store_true", help="write CSV and JSON only")


def build_parser() -> argparse.ArgumentParser:
    """``run`` and ``bench`` sub-commands."""
    parser = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_arguments(sub.add_parser("run", help="load a target and write CSV, JSON and plots"))
    bench = sub.add_parser("bench", help="run the benchmarks and regenerate docs/BENCHMARKS.md")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of python -m loadtests.bench")
    return parser


def load_inputs(args: argparse.Namespace):
    """The images and questions ``args`` ask for."""
    if args.images is not None:
        questions = tuple(args.question) if args.question else None
        return folder_inputs(args.images, args.inputs, **({"questions": questions} if questions else {}),
                             modality=args.modality)
    if args.dataset is not None:
        return dataset_inputs(args.dataset, args.inputs, side=args.image_side)
    return phantom_inputs(args.inputs, seed=args.seed + 1, side=args.image_side)


def command_run(args: argparse.Namespace) -> int:
    """Validate, start the service if needed, run every level, write the report."""
    from loadtests.local_service import ServiceStartError, start_service
    from loadtests.report import format_summary
    from loadtests.run import LoadOptions, is_loopback, listening_pid, run_and_report, split_address

    try:
        mix = parse_mix(args.mix) if args.mix else None
        if mix and args.scenario != "mixed":
            raise ValueError("--mix only applies to --scenario mixed")
        kinds = set(mix or SCENARIOS[args.scenario])
        unsupported = kinds - set(TARGET_KINDS[args.target])
        if unsupported:
            raise ValueError(f"target {args.target} cannot send {', '.join(sorted(unsupported))} requests")
        if not 0.0 <= args.invalid_share <= 1.0:
            raise ValueError("--invalid-share must be within [0, 1]")
        if args.address:
            host, port = split_address(args.address)
            if not args.allow_remote and not is_loopback(host):
                raise ValueError(f"{host} is not a loopback address; pass --allow-remote to load it")
        inputs = load_inputs(args)
    except (ValueError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    service = None
    address, server_pid = args.address, args.server_pid
    if address is None:
        wait_for = "segmenters" if kinds == {"segment"} else "ready"
        print(f"starting the service ({wait_for})...", file=sys.stderr)
        try:
            service = start_service(shlex.split(args.service_args), wait_for=wait_for)
        except ServiceStartError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        address, server_pid = service.address(args.target), service.pid
    elif server_pid is None and is_loopback(split_address(address)[0]):
        server_pid = listening_pid(split_address(address)[1])
    options = LoadOptions(target=args.target, address=address, scenario=args.scenario, inputs=inputs,
                          concurrency=args.concurrency or [], rates=args.rate or [], duration=args.duration,
                          requests=args.requests, warmup=args.warmup, timeout=args.timeout,
                          max_in_flight=args.max_in_flight, seed=args.seed, max_tokens=args.max_tokens,
                          brief=args.brief, precision=args.precision, mask_format=args.mask_format, mix=mix,
                          invalid_share=args.invalid_share, slo_ttft_ms=args.slo_ttft_ms,
                          slo_e2e_ms=args.slo_e2e_ms, server_pid=server_pid)
    try:
        levels, written = run_and_report(options, args.out, plots=not args.no_plots,
                                         progress=lambda line: print(line, file=sys.stderr),
                                         command=" ".join(sys.argv), started_service=service is not None)
    finally:
        if service is not None:
            service.stop()
    print(format_summary(levels))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m loadtests``."""
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        from loadtests.bench.__main__ import main as bench_main

        return bench_main(args.bench_args)
    return command_run(args)
