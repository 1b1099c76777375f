"""The committed default model (model_repository/medclm*) loads, and its provenance matches its own weights
and training config, so what the service serves is what docs/medclm.md describes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from transformers import AutoProcessor, LlavaForConditionalGeneration

from training.medclm.config import MedCLMConfig
from training.medclm.export import read_engine_args, verify_model_dir

REPOSITORY = Path(__file__).resolve().parents[4] / "model_repository"
VARIANTS = sorted(p.name for p in REPOSITORY.glob("medclm*") if (p / "1" / "model.json").is_file())


def test_the_default_model_is_committed():
    assert "medclm" in VARIANTS, "model_repository/medclm is missing: make medclm-default"


@pytest.mark.parametrize("name", VARIANTS)
def test_committed_model_loads_and_its_provenance_matches(name):
    folder = REPOSITORY / name
    meta = verify_model_dir(folder, REPOSITORY.parent)
    checkpoint = Path(read_engine_args(folder, REPOSITORY.parent)["model"])
    config = MedCLMConfig.from_dict(meta["config"])  # unknown or missing keys would raise
    hf = json.loads((checkpoint / "config.json").read_text())
    assert hf["text_config"]["hidden_size"] == config.text_hidden
    assert hf["text_config"]["num_hidden_layers"] == config.text_layers
    assert hf["vision_config"]["hidden_size"] == config.vision_hidden
    assert hf["vision_config"]["image_size"] == config.image_size
    assert hf["vision_config"]["patch_size"] == config.patch_size
    assert meta["export"]["model"] == name and len(meta["data_fingerprint"]) == 64
    digest = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
    assert digest == meta["export"]["weights_sha256"]  # the weights are the ones the figures were measured on
    assert meta.get("evaluation"), "the export must carry its evaluation figures"
    if meta["export"]["quantization"] is None:  # transformers cannot run vLLM's int8 kernels
        model = LlavaForConditionalGeneration.from_pretrained(checkpoint)
        assert sum(p.numel() for p in model.parameters()) > 1e6
        processor = AutoProcessor.from_pretrained(checkpoint)
        assert "<image>" in processor.tokenizer.get_vocab()
