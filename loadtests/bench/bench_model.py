"""A ~80M-parameter LLaVA with random weights, for serving-speed benchmarks where the engine matters.

The trained default (~5M parameters) is so small that per-request overheads dominate any timing; speed
comparisons of serving engines need a model whose matmuls cost something. This one is built with the
trainer's own ``build_model`` (plain ``LlavaForConditionalGeneration``), a tokenizer trained on the inputs'
phantom dataset, saved with the trainer's ``save_checkpoint`` and exported with the real exporter in every
precision — the same path a trained model takes, minus the training.

Random weights make random text, and a random model may emit end-of-sequence at any step, which would make
output lengths differ between runs and engines. The ``lm_head`` row of EOS is therefore zeroed: its logit
is always 0 while the other 1000-odd random logits almost surely exceed it, so greedy decoding always runs
to ``max_tokens`` and every engine generates exactly the same number of tokens.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from training.medclm.config import MedCLMConfig

# text: 10 layers x (4 x 768^2 attention + 3 x 768 x 2048 SwiGLU) ~ 71M; vision: 6 layers of 384 ~ 11M;
# embeddings, lm_head and projector ~ 3M. 128 px / patch 16 = 64 image tokens, as the default model.
BENCH_MODEL = {
    "image_size": 128, "patch_size": 16, "vision_hidden": 384, "vision_layers": 6, "vision_heads": 6,
    "vision_intermediate": 1536, "text_hidden": 768, "text_layers": 10, "text_heads": 12,
    "text_intermediate": 2048, "max_positions": 1024, "vocab_size": 1024, "preset": "bench-80m-random",
}
MODEL_NAME = "medclm"


def bench_config(**changes) -> MedCLMConfig:
    """The benchmark model's config (the tiny preset with the sizes above)."""
    return MedCLMConfig(**{**BENCH_MODEL, **changes})


def build_random_checkpoint(data: Path, out: Path, seed: int = 0) -> dict:
    """Write a random-weight checkpoint to ``out`` (tokenizer trained on ``data``'s records); returns facts
    about it (parameters, sizes)."""
    import torch

    from training.medclm.checkpoint import save_checkpoint
    from training.medclm.data import load_records
    from training.medclm.model import build_image_processor, build_model, count_parameters
    from training.medclm.prompts import INSTRUCTIONS
    from training.medclm.tokenizer import corpus_texts, train_tokenizer

    config = bench_config(seed=seed)
    records = load_records(Path(data) / "train.jsonl")
    tokenizer = train_tokenizer(corpus_texts(records, INSTRUCTIONS), vocab_size=config.vocab_size)
    model = build_model(config, tokenizer)
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id].zero_()  # never the greedy choice: see the module docstring
    save_checkpoint(out, model, tokenizer, build_image_processor(config.image_size), config, stage="random",
                    step=0, fingerprint="random-weights", figures={})
    return {"parameters": count_parameters(model), "config": dataclasses.asdict(config),
            "text_parameters": sum(p.numel() for n, p in model.named_parameters() if "language_model" in n),
            "vision_parameters": sum(p.numel() for n, p in model.named_parameters() if "vision_tower" in n)}


def build_bench_repository(data: Path, workdir: Path, precisions: tuple[str, ...] = ("fp32", "bf16", "int8"),
                           segmenters: Path | None = None) -> tuple[Path, dict]:
    """``workdir/model_repository`` with the random model exported in ``precisions`` (and symlinks to the
    organ segmenters of ``segmenters``, so the service can verify grounding); returns (repository, facts)."""
    from training.medclm.export import export_model

    workdir = Path(workdir)
    repository = workdir / "model_repository"
    facts_path = workdir / "bench_model.json"
    cached = json.loads(facts_path.read_text()) if facts_path.is_file() else {}
    folders = [repository / (MODEL_NAME if p == "fp32" else f"{MODEL_NAME}_{p}") for p in precisions]
    if cached.get("config") == dataclasses.asdict(bench_config()) and all(
            (folder / "1" / "model.json").is_file() for folder in folders):
        return repository, cached  # built by an earlier run with the same sizes
    checkpoint = workdir / "checkpoint"
    facts = build_random_checkpoint(data, checkpoint)
    repository.mkdir(parents=True, exist_ok=True)
    for precision in precisions:
        folder = export_model(checkpoint, repository, MODEL_NAME, precision, root=workdir)
        facts.setdefault("sizes_mb", {})[precision] = round(
            (folder / "1" / "checkpoint" / "model.safetensors").stat().st_size / 1e6, 1)
    if segmenters is not None:
        for model in sorted(Path(segmenters).glob("organ_seg_*")):
            link = repository / model.name
            if not link.exists():
                link.symlink_to(model.resolve())
    facts_path.write_text(json.dumps(facts, indent=2) + "\n")
    return repository, facts
