"""W8A8 int8 checkpoints in the compressed-tensors format, which vLLM's CPU backend serves.

Scheme (llm-compressor's "W8A8" preset, written by hand: llm-compressor itself would downgrade this
environment's transformers and compressed-tensors, so it is not used):
- the text model's linear layers (q/k/v/o, gate/up/down): int8 weights, one symmetric scale per output
  channel, and int8 activations quantised per token at run time;
- the vision tower, the projector, the embeddings and ``lm_head`` stay in float: they are a small share of
  the compute at this size and the most sensitive to rounding.

Weights are limited to ±``weight_max``. With the full ±127 range, vLLM's int8 matmul on an AVX2 CPU
without VNNI drifted from a fake-quantised transformers reference at the 2nd token, while ±63 matched it
24/24 tokens (consistent with int16 saturation of u8×s8 pair sums in the AVX2 path; re-check on VNNI/AMX
machines, where 127 should be exact and 1 bit more precise).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from training.medclm.checkpoint import META_FILE, STATE_FILE, read_meta, rename_vision_weights_for_vllm
from training.medclm.errors import MedCLMError

DEFAULT_WEIGHT_MAX = 63
# Text-model linears in either on-disk layout (transformers 4/5 legacy "language_model.model.layers" or the
# new "model.language_model.layers").
QUANTIZED_WEIGHT = re.compile(
    r"^(?:model\.)?language_model\.(?:model\.)?layers\.\d+\.(?:self_attn|mlp)\."
    r"(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$")


def quantization_config(weight_max: int = DEFAULT_WEIGHT_MAX) -> dict:
    """The ``quantization_config`` block of config.json that vLLM's compressed-tensors loader reads."""
    return {
        "quant_method": "compressed-tensors",
        "format": "int-quantized",
        "quantization_status": "compressed",
        "config_groups": {"group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False},
            "input_activations": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token",
                                  "dynamic": True},
        }},
        "ignore": ["re:.*lm_head", "re:.*vision_tower.*", "re:.*multi_modal_projector.*"],
        "medclm_weight_max": weight_max,  # extra key (ignored by loaders): how the weights were clipped
    }


def quantize_weight(weight: torch.Tensor, weight_max: int = DEFAULT_WEIGHT_MAX) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, float32 scale of shape [out, 1]) with ``weight ≈ int8 * scale`` per output channel."""
    scale = weight.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / weight_max
    return torch.round(weight.float() / scale).clamp(-weight_max, weight_max).to(torch.int8), scale


def quantize_tensors(tensors: dict[str, torch.Tensor], weight_max: int = DEFAULT_WEIGHT_MAX,
                     ) -> tuple[dict[str, torch.Tensor], int]:
    """Tensors with every text-model linear weight replaced by its int8 weight and ``weight_scale``."""
    out, count = {}, 0
    for name, tensor in tensors.items():
        if QUANTIZED_WEIGHT.match(name):
            out[name], out[name[:-len("weight")] + "weight_scale"] = quantize_weight(tensor, weight_max)
            count += 1
        else:
            out[name] = tensor
    return out, count


def quantize_w8a8(checkpoint: Path, out: Path, weight_max: int = DEFAULT_WEIGHT_MAX) -> Path:
    """Write a W8A8 copy of a MedCLM checkpoint to ``out`` (no trainer state); returns ``out``."""
    from safetensors.torch import load_file, save_file

    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.is_dir():
        raise MedCLMError(f"checkpoint {checkpoint} does not exist")
    meta = read_meta(checkpoint)
    if not 1 <= weight_max <= 127:
        raise MedCLMError(f"weight_max must be in 1..127, got {weight_max}")
    config = json.loads((checkpoint / "config.json").read_text())
    if "quantization_config" in config:
        raise MedCLMError(f"{checkpoint} is already quantized")
    if out.resolve() == checkpoint.resolve():
        raise MedCLMError("--out must differ from --checkpoint")
    shutil.copytree(checkpoint, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(STATE_FILE, "*.safetensors*"))
    total = 0
    for file in sorted(checkpoint.glob("*.safetensors")):
        tensors, count = quantize_tensors(load_file(str(file)), weight_max)
        save_file(tensors, str(out / file.name), metadata={"format": "pt"})
        total += count
    if (checkpoint / "model.safetensors.index.json").is_file():
        raise MedCLMError("sharded checkpoints are not supported by quantize yet")  # tiny/base fit one file
    if total == 0:
        raise MedCLMError(f"{checkpoint} has no text-model linear weights to quantize")
    rename_vision_weights_for_vllm(out)
    config["quantization_config"] = quantization_config(weight_max)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    meta["quantization"] = {"scheme": "w8a8", "format": "compressed-tensors int-quantized", "weight_max": weight_max,
                            "quantized_linears": total, "source": str(checkpoint)}
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out
