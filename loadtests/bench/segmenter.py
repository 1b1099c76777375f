"""Segmenter benchmarks (issue items 4c-4f): the service's ``Segment`` against bare ONNX Runtime and against
the local Triton, dynamic batching on vs off, precision variants, latency against image side, and achieved
GFLOP/s against this CPU's peak.

All service and Triton runs use the same CT phantom PNGs (the CT model is the one compared with the bare
session), the same closed-loop levels and durations, gRPC on loopback, one target at a time.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import numpy as np

from loadtests.bench.common import Log, measure, segmenter_repository, slim
from loadtests.bench.config import BenchConfig
from loadtests.bench.flops import count_flops, peak_estimate
from loadtests.inputs import phantom_inputs
from loadtests.local_service import start_service
from loadtests.run import LoadOptions, listening_pid

VARIANTS = ("fp32", "fp16", "int8")
SERVICE_ONNX_THREADS = 1  # the service's default --onnx-threads (Settings.onnx_threads)


def _model_path(repository: Path, variant: str, modality: str = "ct") -> Path:
    name = f"organ_seg_{modality}" if variant == "fp32" else f"organ_seg_{modality}_{variant}"
    return repository / name / "1" / "model.onnx"


def bare_onnx(repository: Path, tensor: np.ndarray, runs: int) -> dict[str, dict]:
    """Per variant: ``session.run`` p50/p99 at batch 1 with the service's thread count, images/s at batch 8
    with one and with both cores, and the resident memory a loaded-and-run session adds."""
    import psutil

    from training.segmenter.export import ort_session

    process = psutil.Process()
    single, batch = tensor[:1], np.repeat(tensor[:1], 8, axis=0)
    results = {}
    for variant in VARIANTS:
        rss_before = process.memory_info().rss
        sessions = {threads: ort_session(_model_path(repository, variant), threads=threads) for threads in (1, 2)}
        for session in sessions.values():  # first runs allocate arenas and pick kernels
            for _ in range(3):
                session.run(None, {"image": batch})
                session.run(None, {"image": single})
        rss_growth = (process.memory_info().rss - rss_before) / 1e6
        latencies = []
        for _ in range(runs):
            started = time.perf_counter()
            sessions[SERVICE_ONNX_THREADS].run(None, {"image": single})
            latencies.append((time.perf_counter() - started) * 1000)
        rates = {}
        for threads, session in sessions.items():
            rounds = max(4, runs // 20)
            started = time.perf_counter()
            for _ in range(rounds):
                session.run(None, {"image": batch})
            rates[threads] = 8 * rounds / (time.perf_counter() - started)
        results[variant] = {"p50_ms": float(np.percentile(latencies, 50)),
                            "p99_ms": float(np.percentile(latencies, 99)),
                            "images_per_s_b8_1thread": rates[1], "images_per_s_b8_2threads": rates[2],
                            "rss_growth_mb": rss_growth,
                            "size_mb": _model_path(repository, variant).stat().st_size / 1e6,
                            "threads_b1": SERVICE_ONNX_THREADS}
        del sessions
    return results


def pipeline_parts(repository: Path, image, runs: int) -> dict[str, float]:
    """p50 (ms) of each step the service performs for one request, in process and without transport: decode,
    preprocess (window + letterbox), ``session.run`` (service thread count), mask restoration at the original
    size (``global_labels``). Their sum is what the service cannot avoid; the rest of its latency is transport,
    batching and encoding."""
    from service.core.pipeline import segmenter_input
    from service.core.types import ImageInput
    from service.imaging.decode import decode_image
    from training.segmenter.export import ort_session
    from training.segmenter.onnx_segmenter import global_labels, prepare_input, read_contract

    path = _model_path(repository, "fp32")
    contract = read_contract(path, "ct")
    session = ort_session(path, threads=SERVICE_ONNX_THREADS)
    steps: dict[str, list[float]] = {"decode_ms": [], "preprocess_ms": [], "run_ms": [], "restore_ms": []}
    for index in range(runs + 3):
        t0 = time.perf_counter()
        decoded = decode_image(ImageInput(image.data, image.media_type, 0, image.modality), 50_000_000)
        t1 = time.perf_counter()
        tensor, box = prepare_input(segmenter_input(decoded), contract)
        t2 = time.perf_counter()
        probabilities = session.run(["probabilities"], {"image": tensor[None]})[0]
        t3 = time.perf_counter()
        global_labels(probabilities[0], box, contract)
        t4 = time.perf_counter()
        if index >= 3:  # the first runs allocate and pick kernels
            for key, start, end in (("decode_ms", t0, t1), ("preprocess_ms", t1, t2), ("run_ms", t2, t3),
                                    ("restore_ms", t3, t4)):
                steps[key].append((end - start) * 1000)
    parts = {key: float(np.median(values)) for key, values in steps.items()}
    parts["sum_ms"] = sum(parts.values())
    return parts


def accuracy(repository: Path, log: Log) -> dict[str, dict]:
    """Mean Dice / HD95 of every variant on each modality's held-out phantoms (the segmenter's evaluation)."""
    from training.segmenter.evaluate import evaluate_cases, onnx_predictor
    from training.segmenter.export import ort_session
    from training.segmenter.pipeline import held_out_cases, onnx_config_and_spec

    scores: dict[str, dict] = {}
    for modality in ("ct", "cxr"):
        config, spec = onnx_config_and_spec(_model_path(repository, "fp32", modality), modality)
        cases = held_out_cases(config, None)
        for variant in VARIANTS:
            result = evaluate_cases(onnx_predictor(ort_session(_model_path(repository, variant, modality))), cases,
                                    spec, progress=False)
            scores.setdefault(variant, {})[modality] = {"mean_dice": result["mean_dice"],
                                                        "mean_hd95_mm": result["mean_hd95_mm"],
                                                        "images": result["images"]}
        log(f"segmenter accuracy {modality}: " + ", ".join(f"{v} {scores[v][modality]['mean_dice']:.4f}"
                                                           for v in VARIANTS))
    return scores


def _options(address: str, pid: int, inputs, config: BenchConfig, levels, duration=None, requests=None,
             precision: str = "") -> LoadOptions:
    return LoadOptions(target="grpc", address=address, scenario="segment", inputs=inputs, concurrency=list(levels),
                       duration=duration, requests=requests, warmup=config.warmup, precision=precision,
                       server_pid=pid)


def service_runs(repository: Path, config: BenchConfig, inputs, runs_dir: Path, log: Log, batching: bool) -> dict:
    """The service's Segment at each level; with batching also per precision variant and per image side."""
    args = ["--model-repository", str(repository), *shlex.split(config.seg_service_args)]
    if not batching:
        args.append("--no-batching")
    service = start_service(args, wait_for="segmenters")
    label = "on" if batching else "off"
    try:
        address = service.address("grpc")
        result = {"levels": measure(_options(address, service.pid, inputs, config, config.seg_concurrency,
                                             duration=config.seg_duration), runs_dir, f"segment_batching_{label}", log)}
        if not batching:
            return result
        top = max(config.seg_concurrency)
        result["variants"] = {variant: measure(_options(address, service.pid, inputs, config, sorted({1, top}),
                                                        duration=config.seg_variant_duration, precision=variant),
                                               runs_dir, f"segment_precision_{variant}", log)
                              for variant in VARIANTS}
        result["sides"] = {}
        for side in config.seg_sides:
            side_inputs = phantom_inputs(4, seed=config.seed, side=side, modalities=("ct",))
            (level,) = measure(_options(address, service.pid, side_inputs, config, [1],
                                        requests=config.seg_side_requests), runs_dir, f"segment_side_{side}", log)
            result["sides"][side] = level
        return result
    finally:
        service.stop()


def triton_runs(repository: Path, config: BenchConfig, inputs, runs_dir: Path, log: Log) -> dict:
    """The same levels against the local Triton serving the same repository (KServe v2 infer over gRPC)."""
    from loadtests.bench.triton_client import TritonSegmentClient
    from service.triton_local import LocalTriton

    triton = LocalTriton(repository).start()
    try:
        pid = listening_pid(triton.grpc_port)
        options = _options(triton.grpc_url, pid, inputs, config, config.seg_concurrency, duration=config.seg_duration)
        options.target = "triton"
        client = TritonSegmentClient(triton.grpc_url, repository)
        for spec in [options.plan().next() for _ in range(len(inputs))]:
            client.prepare(spec)  # preprocessing happens before the clock starts (see triton_client)
        return {"levels": measure(options, runs_dir, "segment_triton", log, client=client, triton_grpc=triton.grpc_url)}
    finally:
        triton.stop()


def run_segmenter(config: BenchConfig, work: Path, log: Log) -> dict:
    """Every segmenter measurement; returns the results for the docs."""
    repository = segmenter_repository(work / "segmenter_repository")
    runs_dir = work / "runs"
    inputs = phantom_inputs(config.input_images, seed=config.seed, modalities=("ct",))
    from loadtests.bench.triton_client import network_input

    _, tensor = network_input(inputs[0].data, inputs[0].media_type, inputs[0].modality, repository)
    results: dict = {"inputs": f"{len(inputs)} CT phantom PNGs ({inputs[0].name}, ...), 16-bit, HU + 1024",
                     "flops": count_flops(_model_path(repository, "fp32")), "peak": peak_estimate()}
    log("segmenter: bare ONNX Runtime")
    results["bare"] = bare_onnx(repository, tensor, config.seg_latency_runs)
    results["pipeline_parts"] = pipeline_parts(repository, inputs[0], max(20, config.seg_latency_runs // 4))
    log("segmenter: service, batching on")
    results["batching_on"] = service_runs(repository, config, inputs, runs_dir, log, batching=True)
    log("segmenter: service, batching off")
    results["batching_off"] = service_runs(repository, config, inputs, runs_dir, log, batching=False)
    if config.triton:
        log("segmenter: local Triton")
        try:
            results["triton"] = triton_runs(repository, config, inputs, runs_dir, log)
        except Exception as exc:  # noqa: BLE001 - Triton's runtime is optional (its own venv); say why it is missing
            log(f"Triton comparison skipped: {exc}")
            results["triton"] = {"skipped": str(exc)}
    if config.seg_accuracy:
        results["accuracy"] = accuracy(repository, log)
    return _slimmed(results)


def _slimmed(results: dict) -> dict:
    """Drop per-request arrays from every level (the full ones stay in the runs folder)."""
    def walk(value):
        if isinstance(value, dict):
            if "request_throughput" in value:
                return slim(value)
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value
    return walk(results)
