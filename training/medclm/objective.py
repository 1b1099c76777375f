"""The training objective as one module, so ``accelerate``/DDP sees a single forward per step.

It holds the LLaVA model and the warm-up heads. The image is encoded once: the selected patch features
feed both the dense heads and LLaVA's projector, and the projected features are scattered into the
``<image>`` positions of the text embeddings exactly as ``LlavaModel.forward`` does.
"""

from __future__ import annotations

import torch
from torch import nn

from training.medclm.data import weighted_lm_loss
from training.medclm.model import base_llava
from training.medclm.warmup import VisionWarmupHeads, dense_loss


class MedCLMObjective(nn.Module):
    """LLaVA + warm-up heads; ``forward`` returns the losses of one batch."""

    def __init__(self, model: nn.Module, heads: VisionWarmupHeads | None, config):
        super().__init__()
        self.model = model  # the (possibly peft-wrapped) LlavaForConditionalGeneration
        self.heads = heads
        self.config = config

    def patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, P, H_vision) features of the layer LLaVA reads, CLS dropped ('default' strategy)."""
        llava = base_llava(self.model)
        layer = llava.config.vision_feature_layer
        outputs = llava.model.vision_tower(pixel_values, output_hidden_states=True)
        return outputs.hidden_states[layer][:, 1:]

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, weights: torch.Tensor | None = None,
                dense_targets: dict | None = None, dense_weight: float = 0.0) -> dict:
        """Losses: ``loss`` (what to backpropagate), ``lm`` (batch), ``lm_per_sequence``, ``dense``, parts.

        Without ``input_ids`` only the vision tower and heads run (the warm-up stage).
        """
        cfg = self.config
        llava = base_llava(self.model)
        features = self.patch_features(pixel_values)
        result: dict = {}
        loss = features.new_zeros(())
        if dense_targets is not None and dense_weight > 0 and self.heads is not None:
            dense, parts = dense_loss(self.heads(features), dense_targets, cfg.dense_organ_weight,
                                      cfg.dense_lesion_weight, cfg.dense_box_weight, cfg.dense_lesion_pos_weight,
                                      cfg.dense_image_weight, cfg.dense_digit_weight)
            result["dense"], result["dense_parts"] = dense.detach(), parts
            loss = loss + dense_weight * dense
        if input_ids is not None:
            image_features = llava.model.multi_modal_projector(features)
            embeds = llava.get_input_embeddings()(input_ids)
            image_mask = (input_ids == llava.config.image_token_id).unsqueeze(-1)
            if int(image_mask.sum()) != image_features.shape[0] * image_features.shape[1]:
                raise ValueError("image placeholder count does not match the image features")
            embeds = embeds.masked_scatter(image_mask, image_features.to(embeds.dtype))
            logits = self.model(inputs_embeds=embeds, attention_mask=attention_mask).logits
            lm, per_sequence = weighted_lm_loss(logits, input_ids, weights)
            result["lm"], result["lm_per_sequence"] = lm.detach(), per_sequence.detach()
            loss = loss + lm
        result["loss"] = loss
        return result
