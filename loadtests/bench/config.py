"""Sizes and durations of the benchmarks: one dataclass, a reason beside each default, ``--key=value``
overrides (unknown keys fail), and a ``quick`` preset for trying the pipeline in a few minutes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from training.overrides import apply_overrides as shared_apply_overrides


class BenchError(RuntimeError):
    """A benchmark step failed (engine did not start, unknown option, missing model)."""


@dataclass
class BenchConfig:
    """Everything that decides a ``make bench`` run (defaults: the full run, ~30-45 min on 2 cores)."""

    # --- inputs ---
    input_images: int = 8  # phantom images (CT and CXR alternating) the requests cycle through
    seed: int = 1  # phantom generation
    # --- VQA on the random-weight ~80M LLaVA ---
    vqa_requests: int = 32  # prompts of the throughput comparisons: two full waves at concurrency 16
    vqa_concurrency: int = 16  # the comparison point
    vqa_max_tokens: int = 64  # output tokens per request (EOS is disabled in the random model: always reached)
    ttft_requests: int = 8  # single requests whose time to first token is measured (median reported)
    variant_requests: int = 16  # bf16 / int8 throughput prompts (bf16 is emulated on AVX2: slow)
    output_lengths: tuple[int, ...] = (16, 32, 64, 128, 256)  # 4e VQA sweep
    length_requests: int = 3  # requests per output length at concurrency 1
    vllm_threads: int = 2  # both cores, as the service's default --vllm-threads
    # --- accuracy of the trained default per precision (training.medclm bench) ---
    accuracy_records: int = 8  # Medium test records (plus their Hard twins) evaluated per variant
    accuracy_data: str = "data/medclm"  # the default model's dataset; built small when missing
    # --- segmenter ---
    seg_concurrency: tuple[int, ...] = (1, 4, 16)  # closed-loop levels
    seg_duration: float = 8.0  # seconds per level (a 2-core machine answers ~100-200 requests in that time)
    seg_latency_runs: int = 200  # bare session.run calls for its p50
    seg_sides: tuple[int, ...] = (128, 192, 256, 384, 512)  # 4e image sides
    seg_side_requests: int = 40  # requests per side at concurrency 1
    seg_variant_duration: float = 5.0  # seconds per precision variant and level
    seg_service_args: str = ""  # extra service flags for every segmenter service, e.g. "--onnx-threads 2"
    seg_accuracy: bool = True  # re-run the segmenter evaluation (Dice) on the held-out phantoms
    triton: bool = True  # compare with the local Triton (needs .venv-triton)
    warmup: int = 8  # discarded requests before each level
    # --- which parts ---
    sections: str = "vqa,accuracy,segmenter"  # comma-separated subset to run

    def to_dict(self) -> dict:
        """Plain JSON form, recorded in the results."""
        return dataclasses.asdict(self)


QUICK = {  # the same pipeline in a few minutes: for development, not for the docs
    "input_images": 4, "vqa_requests": 8, "vqa_concurrency": 4, "vqa_max_tokens": 16, "ttft_requests": 2,
    "variant_requests": 4, "output_lengths": (8, 32), "length_requests": 1, "accuracy_records": 2,
    "seg_concurrency": (1, 4), "seg_duration": 2.0, "seg_latency_runs": 30, "seg_sides": (128, 512),
    "seg_side_requests": 5, "seg_variant_duration": 1.0, "seg_accuracy": False, "warmup": 2,
}


def load_bench_config(quick: bool = False, overrides: list[str] | None = None) -> BenchConfig:
    """Defaults (or the quick preset), then ``--key=value`` overrides; unknown keys raise BenchError."""
    config = BenchConfig(**(QUICK if quick else {}))
    return shared_apply_overrides(config, overrides or [], BenchError)
