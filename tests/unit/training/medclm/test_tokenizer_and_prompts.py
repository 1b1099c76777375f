"""Tokenizer: digit-level boxes, atomic box markup kept when decoding, chat template shared with vLLM."""

from __future__ import annotations

from transformers import AutoTokenizer

from training.data.boxes import grid_values
from training.medclm.model import build_image_processor, build_processor
from training.medclm.prompts import (BRIEF_INSTRUCTION, INSTRUCTIONS, REASONING_INSTRUCTION, build_messages,
                                     instruction_for_stage, record_messages, render_prompt)
from training.medclm.tokenizer import IMAGE_TOKEN, corpus_texts, image_token_id, train_tokenizer


def test_box_digits_are_single_tokens_and_markup_is_atomic(tiny_tokenizer):
    text = "It is located at <box>[613, 5, 648, 578]</box>."
    tokens = tiny_tokenizer.convert_ids_to_tokens(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])
    assert "<box>" in tokens and "</box>" in tokens
    for digits in ("613", "648", "578"):
        assert all(d in tokens for d in digits)
    assert not any(t.strip("Ġ").isdigit() and len(t.strip("Ġ")) > 1 for t in tokens)
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    # The service parses boxes from decoded text; vLLM decodes with skip_special_tokens=True.
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == text


def test_pixel_grid_box_values_are_whole_tokens_and_other_numbers_stay_digits(tiny_records):
    values = grid_values(128)
    tokenizer = train_tokenizer(corpus_texts(tiny_records, INSTRUCTIONS), vocab_size=512, number_tokens=values)
    text = "It is located at <box>[617, 8, 648, 578]</box>; it measures 23 mm, not 1312 or x23."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = [tokenizer.decode([i]) for i in ids]
    assert tokens[tokens.index("<box>"):tokens.index("</box>") + 1] == [
        "<box>", "[", "617", ",", " ", "8", ",", " ", "648", ",", " ", "578", "]", "</box>"]
    assert "1312" not in tokens and tokens.count("23") == 1  # whole numbers only: not in "1312" or "x23"
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert len({tokenizer.convert_tokens_to_ids(str(v)) for v in values}) == len(values)


def test_special_tokens_and_no_implicit_bos(tiny_tokenizer):
    assert tiny_tokenizer.bos_token == "<s>" and tiny_tokenizer.eos_token == "</s>"
    assert tiny_tokenizer.pad_token == "<pad>"
    assert image_token_id(tiny_tokenizer) == tiny_tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert tiny_tokenizer("hello")["input_ids"][0] != tiny_tokenizer.bos_token_id  # the template adds BOS
    unseen = "Ünïcode question? ✓"
    assert tiny_tokenizer.decode(tiny_tokenizer(unseen)["input_ids"]) == unseen  # byte fallback


def test_chat_template_renders_image_first_with_bos(tiny_tokenizer):
    parts = build_messages("Is there a lesion in the liver?", reasoning=True)
    expected = f"<s><|user|><image>\nIs there a lesion in the liver?\n{REASONING_INSTRUCTION}<|assistant|>"
    assert render_prompt(tiny_tokenizer, parts) == expected
    # vLLM's "string" content format: it prepends "<image>\n" to the text itself.
    as_string = [{"role": "user", "content": f"<image>\nIs there a lesion in the liver?\n{REASONING_INSTRUCTION}"}]
    assert render_prompt(tiny_tokenizer, as_string) == expected
    # OpenAI content parts in the other order (text, then image_url) render the same.
    reordered = [{"role": "user", "content": [parts[0]["content"][1], {"type": "image_url", "image_url": {}}]}]
    assert render_prompt(tiny_tokenizer, reordered) == expected


def test_stage_instructions(tiny_records):
    assert instruction_for_stage("easy") == instruction_for_stage("medium") == REASONING_INSTRUCTION
    assert instruction_for_stage("hard") == BRIEF_INSTRUCTION
    hard = next(r for r in tiny_records if r.stage == "hard")
    assert record_messages(hard)[0]["content"][-1]["text"].endswith(BRIEF_INSTRUCTION)
    assert record_messages(hard)[1]["content"][0]["text"] == hard.target


def test_saved_tokenizer_and_processor_round_trip(tiny_tokenizer, tmp_path):
    processor = build_processor(tiny_tokenizer, build_image_processor(64), patch_size=16)
    processor.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    messages = build_messages("How many lesions are visible in this image?", reasoning=False)
    assert render_prompt(loaded, messages) == render_prompt(tiny_tokenizer, messages)
    text = "Answer: <box>[1, 22, 333, 999]</box>"
    assert loaded(text)["input_ids"] == tiny_tokenizer(text)["input_ids"]
    assert (tmp_path / "chat_template.jinja").is_file() or "chat_template" in (
        tmp_path / "tokenizer_config.json").read_text()
