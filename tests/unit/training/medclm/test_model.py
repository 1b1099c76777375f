"""Model: plain LLaVA from config, stretch-resize image processor, LoRA fine-tuning of a local checkpoint."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, LlavaForConditionalGeneration

from training.data.boxes import grid_values, normalize_box
from training.medclm.config import MedCLMConfig
from training.medclm.model import (IMAGE_MEAN, IMAGE_STD, build_image_processor, build_model, build_processor,
                                   count_parameters, init_number_rows, load_pretrained, merge_lora)
from training.medclm.prompts import INSTRUCTIONS
from training.medclm.tokenizer import corpus_texts, image_token_id, train_tokenizer


def test_build_model_is_a_plain_llava_with_tokenizer_ids(tiny_tokenizer, micro):
    config = micro()
    model = build_model(config, tiny_tokenizer)
    assert type(model) is LlavaForConditionalGeneration
    assert model.config.image_token_id == image_token_id(tiny_tokenizer)
    assert model.config.image_seq_length == config.image_tokens == 16
    assert model.config.text_config.vocab_size >= len(tiny_tokenizer)
    assert model.generation_config.eos_token_id == tiny_tokenizer.eos_token_id


def test_tiny_preset_is_about_five_million_parameters(tiny_tokenizer):
    assert 4e6 < count_parameters(build_model(MedCLMConfig(), tiny_tokenizer)) < 8e6


def test_image_processor_stretches_without_crop(tmp_path):
    processor = build_image_processor(64)
    # A non-square image with a bright block: after a stretch, the block keeps its normalised position.
    pixels = np.zeros((100, 200), np.uint8)
    pixels[20:40, 50:150] = 255
    out = processor(images=Image.fromarray(pixels).convert("RGB"), return_tensors="pt")["pixel_values"][0]
    assert out.shape == (3, 64, 64)
    bright = (out[0] > 0).nonzero()
    box = (bright[:, 1].min().item(), bright[:, 0].min().item(), bright[:, 1].max().item() + 1,
           bright[:, 0].max().item() + 1)
    expected = normalize_box((50, 20, 150, 40), 200, 100)
    assert np.allclose(normalize_box(box, 64, 64), expected, atol=20)  # within the bicubic ringing
    assert torch.allclose(out[:, 0, 0], torch.tensor([(0 - m) / s for m, s in zip(IMAGE_MEAN, IMAGE_STD)]))
    processor.save_pretrained(tmp_path)
    reloaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert reloaded.do_center_crop is False and reloaded.size["height"] == reloaded.size["width"] == 64


def test_lora_fine_tuning_of_a_local_checkpoint(tiny_tokenizer, micro, tmp_path):
    base = build_model(micro(), tiny_tokenizer)
    base.save_pretrained(tmp_path / "base")
    build_processor(tiny_tokenizer, build_image_processor(64), 16).save_pretrained(tmp_path / "base")
    build_image_processor(64).save_pretrained(tmp_path / "base")

    config = micro(init_from=str(tmp_path / "base"), lora_rank=4)
    model, tokenizer, _ = load_pretrained(config.init_from, config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "multi_modal_projector" in n for n in trainable)
    assert not any("vision_tower" in n for n in trainable)

    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    ids = torch.tensor([[tokenizer.bos_token_id] + [image_token_id(tokenizer)] * 16 + [5, 6, 7]])
    pixels = torch.randn(1, 3, 64, 64)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = model(input_ids=ids, pixel_values=pixels, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.named_parameters() if n in frozen_before)

    merged = merge_lora(model)
    assert type(merged) is LlavaForConditionalGeneration
    merged.save_pretrained(tmp_path / "merged")
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "merged")
    model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids, pixel_values=pixels).logits,
                              merged(input_ids=ids, pixel_values=pixels).logits, atol=1e-5)


def test_number_rows_start_smooth_in_value(tiny_records, micro):
    values = grid_values(128)
    tokenizer = train_tokenizer(corpus_texts(tiny_records, INSTRUCTIONS), vocab_size=512, number_tokens=values)
    model = build_model(micro(), tokenizer)
    other = tokenizer.convert_tokens_to_ids("<box>")
    before = model.get_input_embeddings().weight[other].clone()
    init_number_rows(model, tokenizer, values)
    for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        rows = weight[tokenizer.convert_tokens_to_ids([str(v) for v in values])]
        cosine = torch.nn.functional.cosine_similarity
        near = cosine(rows[60], rows[61], dim=0)  # neighbouring pixels
        far = cosine(rows[60], rows[100], dim=0)  # 40 pixels apart
        assert near > 0.4 and near > far + 0.3
        assert abs(float(rows.std()) - 0.02) < 0.005  # the usual init scale, not a louder signal
    assert torch.equal(model.get_input_embeddings().weight[other], before)  # other tokens untouched
