"""Which target tokens does the language model get right when it is fed the true text before them?

Teacher forcing isolates one decision at a time, where free generation compounds errors:
- the digits of the first box in a Medium rationale (step 4), per coordinate and digit place, each predicted
  from the image, the question and the true text up to it. Hundreds pick the patch row/column band (the
  8x8 grid's patches are 125 units wide); tens and units need the position inside the patch. Per coordinate
  also the whole value (every digit, or the one whole-number token of ``box_tokens: pixels``).
- the conclusion step (the reasoning line before "Answer:"), exact when every one of its tokens is the
  model's top choice, per question type. Grounding and finding questions share steps 1-4 word for word and
  differ only here ("the bounding box of the finding is given below" vs "the answer is <finding>"), so a
  model that ignores the question fails one of them (docs/medclm.md, run #12).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from training.data.boxes import BOX_PATTERN
from training.medclm.checkpoint import META_FILE, read_meta
from training.medclm.config import box_grid
from training.medclm.data import (ANSWER_MARK, ImageCache, collate, load_records, record_image_path, snap_record_boxes,
                                  tokenize_turns)
from training.medclm.errors import MedCLMError
from training.medclm.eval_report import rate
from training.medclm.evaluate import select_eval_records
from training.medclm.model import patch_grid

COORDINATES = ("x1", "y1", "x2", "y2")
PLACES = ("hundreds", "tens", "units")  # from the left of a three-digit value; shorter values lack the first
_STEP_START = re.compile(r"\n\d+\. ")


def box_coordinate_spans(text: str, target_start: int) -> dict[str, tuple[int, int]]:
    """(start, end) characters of each coordinate of the first box at or after ``target_start``."""
    match = BOX_PATTERN.search(text, target_start)
    if match is None:
        return {}
    return {coordinate: match.span(index + 1) for index, coordinate in enumerate(COORDINATES)}


def box_digit_positions(text: str, target_start: int) -> dict[tuple[str, str], int]:
    """Character offset of each digit of the first box at or after ``target_start``, keyed by (coordinate,
    place); values below 100 have no hundreds digit (and below 10 no tens), as the box format writes them."""
    positions = {}
    for coordinate, (start, end) in box_coordinate_spans(text, target_start).items():
        for offset, place in zip(range(end - 1, start - 1, -1), reversed(PLACES)):
            positions[(coordinate, place)] = offset
    return positions


def conclusion_span(text: str, target_start: int) -> tuple[int, int] | None:
    """(start, end) characters of the last reasoning step's text, from the space after its "N." (byte-level
    BPE tokens start at the space before a word), or None without steps."""
    answer_at = text.rfind("\n" + ANSWER_MARK)
    if answer_at < target_start:
        return None
    steps = list(_STEP_START.finditer(text, target_start, answer_at))
    return (steps[-1].end() - 1, answer_at) if steps else None


@torch.no_grad()
def token_probe(checkpoint: Path, data_dir: Path, split: str = "test", limit: int = 400,
                batch_size: int = 16) -> dict:
    """Teacher-forced accuracy of the rationale's first box, per coordinate and digit place, and the share of
    conclusion steps predicted exactly, per question type and per ``type/modality``, over ``limit`` Medium
    records."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    checkpoint, data_dir = Path(checkpoint), Path(data_dir)
    model = LlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    tokenizer = processor.tokenizer
    image_tokens = patch_grid(model) ** 2
    records = [r for r in select_eval_records(load_records(data_dir / f"{split}.jsonl"), limit) if r.stage == "medium"]
    config = read_meta(checkpoint)["config"] if (checkpoint / META_FILE).is_file() else {}
    grid = box_grid(config)
    if grid:  # teacher-force the boxes in the form the model was trained on
        records = [snap_record_boxes(r, grid) for r in records]
    if not records:
        raise MedCLMError(f"{data_dir / f'{split}.jsonl'} has no Medium records")
    images = ImageCache(data_dir, processor.image_processor)
    digit_hits: dict[tuple[str, str], list[bool]] = {}
    value_hits: dict[str, list[bool]] = {}  # every token of the coordinate right: digits or a whole number
    conclusion_hits: dict[str, list[bool]] = {}
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        sequences = [tokenize_turns(tokenizer, [r], image_tokens, 1.0, 1.0) for r in chunk]
        batch = collate(sequences, tokenizer.pad_token_id)
        pixels = torch.stack([images.get(record_image_path(r), r.modality) for r in chunk])
        logits = model(input_ids=batch["input_ids"], pixel_values=pixels,
                       attention_mask=batch["attention_mask"]).logits
        guesses = logits.argmax(-1)  # guesses[i] predicts token i + 1
        for row, (record, seq) in enumerate(zip(chunk, sequences)):
            token_at = {s: i for i, s in enumerate(seq.starts) if s >= 0}
            target_start = seq.text.rfind(record.target)

            def right(i: int) -> bool:
                return i > 0 and int(guesses[row, i - 1]) == seq.input_ids[i]

            for key, char in box_digit_positions(seq.text, target_start).items():
                if char in token_at and char + 1 in token_at:  # a digit that is a token of its own
                    digit_hits.setdefault(key, []).append(right(token_at[char]))
            for coordinate, (first, end) in box_coordinate_spans(seq.text, target_start).items():
                tokens = [i for s, i in token_at.items() if first <= s < end]
                value_hits.setdefault(coordinate, []).append(bool(tokens) and all(right(i) for i in tokens))
            span = conclusion_span(seq.text, target_start)
            if span is not None:
                tokens = [i for s, i in token_at.items() if span[0] <= s < span[1]]
                exact = all(right(i) for i in tokens)
                for key in (record.question_type, f"{record.question_type}/{record.modality}"):
                    conclusion_hits.setdefault(key, []).append(exact)
    return {"checkpoint": str(checkpoint), "records": len(records),
            "box_digits": {c: {p: rate(digit_hits.get((c, p), [])) for p in PLACES} for c in COORDINATES},
            "box_values": {c: rate(value_hits.get(c, [])) for c in COORDINATES},
            "conclusion_exact": {t: rate(v) for t, v in sorted(conclusion_hits.items())}}
