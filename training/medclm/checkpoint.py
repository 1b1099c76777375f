"""Checkpoints: a Hugging Face directory that transformers and vLLM load as is, plus ``medclm.json``.

Layout of ``<dir>``:
- ``config.json``, ``generation_config.json``, ``model.safetensors``: a plain LlavaForConditionalGeneration
  (LoRA adapters merged in), vision weights named ``vision_tower.vision_model.*`` as vLLM expects;
- ``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``, ``preprocessor_config.json`` and
  ``processor_config.json``: written by ``LlavaProcessor.save_pretrained``;
- ``medclm.json``: training config, data fingerprint, stage, step and evaluation figures;
- ``trainer_state.pt``: optimiser, warm-up heads, curriculum and RNG state for ``--resume`` (training only;
  an export copies everything else).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import torch
import transformers

from training.medclm.config import MedCLMConfig
from training.medclm.errors import MedCLMError
from training.medclm.model import build_processor, merge_lora

FORMAT = "medclm-checkpoint/1"
# transformers 5 saves the CLIP tower as ``vision_tower.embeddings.*`` (no ``vision_model.`` level), while
# vLLM's LLaVA needs ``vision_tower.vision_model.*``; transformers itself loads either (it strips the prefix).
_VISION_PREFIX = re.compile(r"^((?:model\.)?vision_tower\.)(?!vision_model\.)")
META_FILE = "medclm.json"
STATE_FILE = "trainer_state.pt"


def save_checkpoint(path: Path, model, tokenizer, image_processor, config: MedCLMConfig, *, stage: str,
                    step: int, fingerprint: str, figures: dict, trainer_state: dict | None = None) -> Path:
    """Write the HF directory, ``medclm.json`` and (optionally) the trainer state; returns ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    export = merge_lora(copy.deepcopy(model)) if hasattr(model, "merge_and_unload") else model
    export.save_pretrained(path, safe_serialization=True)
    build_processor(tokenizer, image_processor, export.config.vision_config.patch_size).save_pretrained(path)
    rename_vision_weights_for_vllm(path)
    _plain_tokenizer_class(path)
    # transformers 5 nests the image processor inside processor_config.json; older readers (transformers 4,
    # some vLLM builds) look for preprocessor_config.json, so write it as well (same content).
    image_processor.save_pretrained(path)
    meta = {"format": FORMAT, "stage": stage, "step": step, "config": config.to_dict(),
            "data_fingerprint": fingerprint, "figures": figures, "transformers_version": transformers.__version__}
    (path / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if trainer_state is not None:
        torch.save(trainer_state, path / STATE_FILE)
    return path


def rename_vision_weights_for_vllm(path: Path) -> int:
    """Insert the ``vision_model.`` level into the vision tower's tensor names; returns how many changed."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    renamed = 0
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {}
            for name in handle.keys():
                new = _VISION_PREFIX.sub(r"\1vision_model.", name)
                renamed += new != name
                tensors[new] = handle.get_tensor(name)
        if renamed:
            save_file(tensors, str(file), metadata={**metadata, "format": "pt"})
    index = Path(path) / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {_VISION_PREFIX.sub(r"\1vision_model.", k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2) + "\n")
    return renamed


def _plain_tokenizer_class(path: Path) -> None:
    """Name the tokenizer class every transformers version knows (5.x writes ``TokenizersBackend``)."""
    config_path = Path(path) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def read_meta(path: Path) -> dict:
    """``medclm.json`` of a checkpoint, checked for its format."""
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise MedCLMError(f"{path} is not a MedCLM checkpoint (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise MedCLMError(f"{meta_path} is not valid JSON: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise MedCLMError(f"{meta_path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    MedCLMConfig.from_dict(meta["config"])  # unknown keys / invalid values fail here, before training
    return meta


def read_trainer_state(path: Path) -> dict:
    """The resume state saved next to a checkpoint."""
    state_path = Path(path) / STATE_FILE
    if not state_path.is_file():
        raise MedCLMError(f"{path} has no {STATE_FILE}; it cannot be resumed (export-only copy?)")
    return torch.load(state_path, map_location="cpu", weights_only=False)
