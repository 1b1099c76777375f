"""Projector calibration: image tokens must vary between patches and match the text embeddings' scale."""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from training.medclm.projector import calibrate_projector


def test_calibration_turns_offset_dominated_features_into_varying_tokens():
    config = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=32, num_attention_heads=2),
                         text_config=LlamaConfig(hidden_size=24, num_attention_heads=2, num_key_value_heads=2),
                         projector_hidden_act="gelu")
    projector = LlavaMultiModalProjector(config)
    generator = torch.Generator().manual_seed(0)
    # Like the warmed-up tower: a large shared offset plus a small patch-specific signal.
    features = 40.0 * torch.ones(4, 16, 32) + 0.3 * torch.randn(4, 16, 32, generator=generator)
    figures = calibrate_projector(projector, features, token_norm=0.35, generator=generator)
    assert figures["varying_share_before"] < 0.2 < 0.6 < figures["varying_share_after"]
    out = projector(features.reshape(-1, 32))
    assert abs(float(out.norm(dim=-1).mean()) - 0.35) < 1e-3
    # Two different patches now give clearly different tokens (relative distance, not ~0).
    a, b = out[0], out[1]
    assert float((a - b).norm() / a.norm()) > 0.3
