"""The bare engines, measured in their own process: ``python -m loadtests.bench.engine_worker SPEC OUT``.

SPEC (JSON) names the engine (``vllm``: offline ``LLM.generate``; ``transformers``: the plain ``generate``
loop a user would otherwise write, in static batches), a repository model folder, the requests (image file,
media type, modality hint, question, reasoning) and the generation length. Images are decoded and prompts
rendered with the service's own functions (``service.imaging``, ``training.medclm.prompts``), so the engine
sees exactly what it sees behind the service. OUT receives throughput over all requests, the time to first
token of single requests (``max_tokens=1``), one full single-request latency, and the process's peak RSS.

One engine per process: its memory is measured alone and released when the process ends.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path


def load_requests(spec: dict) -> list[tuple[str, object]]:
    """(prompt text, PIL image) per request, as the service builds them."""
    from service.core.types import ImageInput
    from service.imaging.decode import decode_image
    from service.imaging.model_view import model_view_image
    from training.medclm.prompts import build_messages, render_prompt
    from transformers import AutoTokenizer

    checkpoint = engine_args(spec)["model"]
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    prepared = []
    for request in spec["requests"]:
        data = Path(request["image"]).read_bytes()
        decoded = decode_image(ImageInput(data, request["media_type"], 0, request["modality"]), 50_000_000)
        prompt = render_prompt(tokenizer, build_messages(request["question"], reasoning=request["reasoning"]))
        prepared.append((prompt, model_view_image(decoded)))
    return prepared


def engine_args(spec: dict) -> dict:
    """``model.json`` of the spec's model folder, a relative checkpoint path resolved against the
    repository's parent folder as the service resolves it."""
    from training.medclm.export import read_engine_args

    folder = Path(spec["model_folder"]).resolve()
    return read_engine_args(folder, root=folder.parent.parent)


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children (Linux reports kB)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss +
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1000.0


def _timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def run_vllm(spec: dict, prepared: list) -> dict:
    """Offline vLLM: all requests in one ``generate`` call (at most ``max_num_seqs`` running at once)."""
    from training.medclm.engines import set_vllm_cpu_environment

    set_vllm_cpu_environment(spec["threads"])
    from vllm import LLM, SamplingParams

    args = engine_args(spec)
    llm, load_s = _timed(lambda: LLM(**args, max_num_seqs=spec["max_num_seqs"], disable_log_stats=True))
    inputs = [{"prompt": p, "multi_modal_data": {"image": image}} for p, image in prepared]

    def params(tokens: int):
        return SamplingParams(temperature=0.0, max_tokens=tokens, skip_special_tokens=True)

    llm.generate(inputs[:2], params(4), use_tqdm=False)  # warm-up: first calls allocate and compile
    outputs, batch_s = _timed(lambda: llm.generate(inputs, params(spec["max_tokens"]), use_tqdm=False))
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    ttfts = [_timed(lambda i=i: llm.generate([inputs[i % len(inputs)]], params(1), use_tqdm=False))[1]
             for i in range(spec["ttft_requests"])]
    _, single_s = _timed(lambda: llm.generate([inputs[0]], params(spec["max_tokens"]), use_tqdm=False))
    return {"load_s": load_s, "batch_s": batch_s, "output_tokens": tokens, "ttfts_s": ttfts, "single_s": single_s,
            "engine_args": {k: v for k, v in args.items() if k != "model"}}


def run_transformers(spec: dict, prepared: list) -> dict:
    """transformers ``generate`` in static batches of ``batch_size`` (left-padded), greedy."""
    from training.medclm.engines import PromptRequest, TransformersGenerator

    args = engine_args(spec)
    generator, load_s = _timed(lambda: TransformersGenerator(Path(args["model"]), dtype=args["dtype"],
                                                             threads=spec["threads"], batch_size=spec["batch_size"]))
    requests = [PromptRequest(p, image) for p, image in prepared]
    generator.generate(requests[:2], 4)  # warm-up
    outputs, batch_s = _timed(lambda: generator.generate(requests, spec["max_tokens"]))
    tokens = sum(len(o.token_ids) for o in outputs)
    ttfts = [_timed(lambda i=i: generator.generate([requests[i % len(requests)]], 1))[1]
             for i in range(spec["ttft_requests"])]
    _, single_s = _timed(lambda: generator.generate(requests[:1], spec["max_tokens"]))
    return {"load_s": load_s, "batch_s": batch_s, "output_tokens": tokens, "ttfts_s": ttfts, "single_s": single_s,
            "engine_args": {"dtype": args["dtype"], "batch_size": spec["batch_size"]}}


def main(argv: list[str]) -> int:
    """Run the SPEC, write OUT."""
    spec_path, out_path = (Path(a) for a in argv)
    spec = json.loads(spec_path.read_text())
    prepared = load_requests(spec)
    cpu0 = os.times()
    result = (run_vllm if spec["engine"] == "vllm" else run_transformers)(spec, prepared)
    cpu1 = os.times()
    n = len(prepared)
    result.update({"engine": spec["engine"], "model_folder": spec["model_folder"], "requests": n,
                   "max_tokens": spec["max_tokens"], "request_throughput": n / result["batch_s"],
                   "output_throughput": result["output_tokens"] / result["batch_s"],
                   "median_ttft_ms": 1000 * statistics.median(result["ttfts_s"]) if result["ttfts_s"] else None,
                   "single_request_ms": 1000 * result["single_s"], "peak_rss_mb": peak_rss_mb(),
                   "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)})
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
