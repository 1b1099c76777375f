"""``box_tokens: pixels``: the training records' boxes on the input's pixel grid, one token per coordinate."""

from __future__ import annotations

import pytest
import torch

from training.data.boxes import format_box, grid_values, parse_boxes
from training.medclm.data import snap_record_boxes
from training.medclm.errors import MedCLMError
from training.medclm.trainer import prepare_run


def test_snapped_records_stay_valid_and_move_every_box_together(tiny_records):
    with_boxes = [r for r in tiny_records if r.findings and r.stage == "easy"]
    assert with_boxes
    values = set(grid_values(64))
    for record in with_boxes[:20]:
        snapped = snap_record_boxes(record, 64)  # validated again inside: target = rationale + answer
        boxes = [f.box for f in snapped.findings]
        assert all(v in values for box in boxes for v in box)
        assert all(format_box(b) in snapped.question and format_box(b) in snapped.target for b in boxes)
        assert all(v in values for box in parse_boxes(snapped.target) for v in box)
        assert snapped.question_type == record.question_type and snapped.image == record.image


def test_prepare_run_trains_a_tokenizer_that_writes_each_coordinate_as_one_token(tiny_data, micro):
    config = micro(box_tokens="pixels")  # 64 px: 65 grid values
    dataset, tokenizer, _processor, model, _heads, _state = prepare_run(config, tiny_data, None)
    number_ids = set(tokenizer.convert_tokens_to_ids([str(v) for v in grid_values(64)]))
    records = [r for r in dataset.train if r.stage == "medium" and parse_boxes(r.target)]
    assert records
    for record in records[:10]:
        box = parse_boxes(record.target)[0]
        ids = tokenizer(format_box(box), add_special_tokens=False)["input_ids"]
        assert sum(i in number_ids for i in ids) == 4  # x1, y1, x2, y2: one token each
    rows = model.get_output_embeddings().weight[sorted(number_ids)]
    assert torch.isfinite(rows).all()
    lo, hi = tokenizer.convert_tokens_to_ids([str(v) for v in grid_values(64)[32:34]])  # 500 and 516
    head = model.get_output_embeddings().weight
    assert torch.nn.functional.cosine_similarity(head[lo], head[hi], dim=0) > 0.3  # smooth, not random rows (~0)


def test_a_digits_warm_up_resumes_with_pixel_box_tokens_but_a_later_stage_does_not(tiny_data, micro, tmp_path):
    from training.medclm.trainer import train

    train(micro(), tiny_data, tmp_path / "run", progress=False, stop_after=2)  # warm-up, then Easy
    _dataset, tokenizer, _processor, model, _heads, _state = prepare_run(
        micro(box_tokens="pixels"), tiny_data, tmp_path / "run" / "01-warmup")
    ids = tokenizer(format_box((500, 516, 750, 999)), add_special_tokens=False)["input_ids"]
    numbers = tokenizer.convert_tokens_to_ids(["500", "516", "750", "999"])
    assert len(set(numbers)) == 4 and [i for i in ids if i in numbers] == numbers  # one token per coordinate
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows >= len(tokenizer) and rows % 64 == 0 and model.config.text_config.vocab_size == rows
    with pytest.raises(MedCLMError, match="only from a warm-up checkpoint"):
        prepare_run(micro(box_tokens="pixels"), tiny_data, tmp_path / "run" / "02-easy")
