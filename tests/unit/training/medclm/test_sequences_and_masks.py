"""Sequences and loss masks, token by token: target IN the input, prompt masked, λ_ans / λ_cot weights."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from training.medclm.data import collate, plan_sequences, tokenize_turns, weighted_lm_loss
from training.medclm.model import build_image_processor, build_processor
from training.medclm.prompts import build_messages, render_prompt

IMAGE_TOKENS = 16


def _check_turn(tokenizer, seq, record):
    """Tokens of one record's target: reasoning at 0.2 up to 'Answer:', then 0.8 through EOS."""
    weighted = [i for i, w in enumerate(seq.weights) if w > 0]
    text = tokenizer.decode([seq.input_ids[i] for i in weighted])
    assert text == record.target + tokenizer.eos_token
    answer_start = next(i for i in weighted if tokenizer.decode(seq.input_ids[i:]).startswith("Answer:"))
    for i in weighted:
        expected = 0.8 if i >= answer_start else 0.2
        assert seq.weights[i] == expected, (i, tokenizer.decode([seq.input_ids[i]]))
    assert seq.input_ids[weighted[-1]] == tokenizer.eos_token_id and seq.weights[weighted[-1]] == 0.8


def test_easy_sequence_masks_token_by_token(tiny_tokenizer, tiny_records):
    record = next(r for r in tiny_records if r.stage == "easy" and r.findings)
    seq = tokenize_turns(tiny_tokenizer, [record], IMAGE_TOKENS, 0.8, 0.2)
    ids, kinds = seq.input_ids, seq.kinds
    image_id = tiny_tokenizer.convert_tokens_to_ids("<image>")
    assert ids[0] == tiny_tokenizer.bos_token_id and seq.weights[0] == 0
    assert [i for i, t in enumerate(ids) if t == image_id] == list(range(2, 2 + IMAGE_TOKENS))
    assert all(kinds[i] == "image" and seq.weights[i] == 0 for i in range(2, 2 + IMAGE_TOKENS))
    # The prompt (question + instruction) is in the input and unweighted; the target follows it.
    prompt = render_prompt(tiny_tokenizer, build_messages(record.question, reasoning=True))
    prompt_len = len(tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]) - 1 + IMAGE_TOKENS
    assert all(w == 0 for w in seq.weights[:prompt_len]) and seq.weights[prompt_len] > 0
    assert tiny_tokenizer.decode(ids[:prompt_len]).endswith("\nThink step by step.<|assistant|>")
    assert kinds[prompt_len:].count("prompt") == 0
    assert "reasoning" in kinds and "answer" in kinds
    # Each text token's start offset points at its own text in the rendered conversation (probes rely on it).
    assert seq.starts[2:2 + IMAGE_TOKENS] == [-1] * IMAGE_TOKENS and len(seq.starts) == len(ids)
    for token_id, start in zip(ids, seq.starts):
        piece = tiny_tokenizer.decode([token_id])
        if start >= 0 and piece.strip():
            assert seq.text[start:].startswith(piece), (piece, seq.text[start:start + 20])
    _check_turn(tiny_tokenizer, seq, record)


def test_hard_target_is_all_answer_and_loss_is_finite(tiny_tokenizer, tiny_records):
    record = next(r for r in tiny_records if r.stage == "hard")
    seq = tokenize_turns(tiny_tokenizer, [record], IMAGE_TOKENS, 0.8, 0.2)
    weighted = [w for w in seq.weights if w > 0]
    assert weighted and set(weighted) == {0.8}
    assert "reasoning" not in seq.kinds
    _check_turn(tiny_tokenizer, seq, record)
    batch = collate([seq], tiny_tokenizer.pad_token_id)
    logits = torch.randn(1, batch["input_ids"].shape[1], len(tiny_tokenizer), requires_grad=True)
    loss, _ = weighted_lm_loss(logits, batch["input_ids"], batch["weights"])
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()


def test_multi_question_sequence_weights_each_turn(tiny_tokenizer, tiny_records):
    rng = np.random.default_rng(0)
    plan = next(p for p in plan_sequences(tiny_records, 3, rng) if len(p.records) == 3 and p.stage == "medium")
    seq = tokenize_turns(tiny_tokenizer, plan.records, IMAGE_TOKENS, 0.8, 0.2)
    image_id = tiny_tokenizer.convert_tokens_to_ids("<image>")
    assert seq.input_ids.count(image_id) == IMAGE_TOKENS  # one image per sequence
    assert seq.input_ids.count(tiny_tokenizer.bos_token_id) == 1
    assert seq.input_ids.count(tiny_tokenizer.eos_token_id) == 3
    weighted_text = tiny_tokenizer.decode([t for t, w in zip(seq.input_ids, seq.weights) if w > 0])
    assert weighted_text == "".join(r.target + tiny_tokenizer.eos_token for r in plan.records)
    # Every question is in the (unweighted) input.
    prompt_text = tiny_tokenizer.decode([t for t, w in zip(seq.input_ids, seq.weights) if w == 0])
    assert all(r.question in prompt_text for r in plan.records)


def test_ids_match_llava_processor(tiny_tokenizer, tiny_records):
    """Training ids == what transformers' LlavaProcessor (and so vLLM) builds from the rendered prompt."""
    record = next(r for r in tiny_records if r.stage == "medium")
    processor = build_processor(tiny_tokenizer, build_image_processor(64), patch_size=16)
    full = render_prompt(tiny_tokenizer, [*build_messages(record.question, True, target=record.target)], False)
    image = Image.new("RGB", (80, 64))
    reference = processor(text=[full], images=[image], return_tensors="pt")["input_ids"][0].tolist()
    assert tokenize_turns(tiny_tokenizer, [record], IMAGE_TOKENS, 0.8, 0.2).input_ids == reference


def test_collate_pads_with_zero_weight_and_zero_loss_is_not_nan(tiny_tokenizer, tiny_records):
    seqs = [tokenize_turns(tiny_tokenizer, [r], IMAGE_TOKENS, 0.8, 0.2) for r in tiny_records[:3]]
    batch = collate(seqs, tiny_tokenizer.pad_token_id)
    for row, seq in enumerate(seqs):
        n = len(seq.input_ids)
        assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()
        assert not batch["weights"][row, n:].any()
    logits = torch.randn(*batch["input_ids"].shape, 8, requires_grad=True)
    loss, per_sequence = weighted_lm_loss(logits, torch.zeros_like(batch["input_ids"]),
                                          torch.zeros_like(batch["weights"]))
    assert loss.item() == 0.0 and not torch.isnan(per_sequence).any()
