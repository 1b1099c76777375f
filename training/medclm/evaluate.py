"""Fast in-process evaluation: greedy decoding through the standard transformers path, then scoring.

Generation goes through ``LlavaProcessor`` + ``generate`` exactly as a user of the checkpoint would call
it, so it also checks that the checkpoint works without any of the training code. Scoring follows
REFERENCE.md: normalised exact match of the answer line; a closed answer containing both "yes" and "no"
is wrong; grounding scores Acc@0.5 (IoU ≥ 0.5 against the true box).

This module is the one place where a generated text is scored: :func:`score_answer` (correctness, used by
the trainer's quick evaluation) and :func:`score_record` (correctness plus grounding error, rationale
consistency and format validity, used by ``python -m training.medclm evaluate`` through any engine).
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np
import torch

from training.data.anatomy import organs_for
from training.data.boxes import BOX_SCALE, box_iou, centre_offset, parse_boxes
from training.data.context import size_category
from training.data.records import VQARecord
from training.medclm.data import ANSWER_MARK, ImageCache, record_image_path
from training.medclm.prompts import build_messages, render_prompt


def select_eval_records(val: list[VQARecord], count: int) -> list[VQARecord]:
    """``count`` Medium records spread evenly over the (sorted) val set, plus their Hard twins."""
    medium = sorted((r for r in val if r.stage == "medium"), key=lambda r: r.id)
    if not medium or count <= 0:
        return []
    step = max(1, len(medium) // count)
    chosen = medium[::step][:count]
    by_id = {r.id: r for r in val}
    twins = [by_id.get(r.id.rsplit("-", 1)[0] + "-hard") for r in chosen]
    return chosen + [t for t in twins if t is not None]


def extract_answer(text: str) -> str:
    """The text after the last "Answer:" (the whole text when there is none), stripped."""
    at = text.rfind(ANSWER_MARK)
    return (text[at + len(ANSWER_MARK):] if at >= 0 else text).strip()


def normalise(text: str) -> str:
    """Lower case, collapsed spaces, no trailing punctuation."""
    return re.sub(r"\s+", " ", text.lower()).strip().rstrip(".")


def score_answer(record: VQARecord, generated: str) -> dict:
    """{'correct': bool, 'iou': float | None} for one generated text."""
    predicted = extract_answer(generated)
    if record.question_type == "grounding":
        truth = record.findings[0].box
        boxes = parse_boxes(predicted)
        iou = box_iou(boxes[0], truth) if boxes else 0.0
        return {"correct": iou >= 0.5, "iou": iou}
    pred = normalise(predicted)
    if record.question_type == "presence":
        words = set(re.findall(r"[a-z]+", pred))
        if {"yes", "no"} <= words:  # hedging both ways is wrong (LLaVA-Med's scorer counts it right)
            return {"correct": False, "iou": None}
    return {"correct": pred == normalise(record.answer), "iou": None}


CLOSED_TYPES = ("presence",)  # yes/no questions; every other non-grounding type is open
# A reasoning output: "Reasoning:", steps numbered 1, 2, ... one per line, then one "Answer: ..." line.
_REASONING_SHAPE = re.compile(r"Reasoning:\n((?:\d+\. [^\n]+\n)+)Answer: [^\n]+")
_BRIEF_SHAPE = re.compile(r"Answer: [^\n]+")


def question_kind(record: VQARecord) -> str:
    """``closed`` (yes/no), ``open`` (one word or phrase) or ``grounding`` (a box)."""
    if record.question_type == "grounding":
        return "grounding"
    return "closed" if record.question_type in CLOSED_TYPES else "open"


def format_valid(text: str, reasoning: bool, grounding: bool) -> bool:
    """Whether ``text`` has the contract's shape: numbered steps then ``Answer:`` (or the answer line alone
    for brief prompts), steps numbered 1..n in order, and a parsable box in the answer of a grounding question."""
    text = text.strip()
    match = (_REASONING_SHAPE if reasoning else _BRIEF_SHAPE).fullmatch(text)
    if match is None:
        return False
    if reasoning:
        numbers = [int(line.split(".", 1)[0]) for line in match.group(1).splitlines()]
        if numbers != list(range(1, len(numbers) + 1)):
            return False
    return bool(parse_boxes(extract_answer(text))) if grounding else True


def organs_named(text: str, modality: str) -> set[str]:
    """Organ names of ``modality`` that occur in ``text`` as whole words (longest names matched first)."""
    names = sorted((o.name for o in organs_for(modality)), key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b")
    return set(pattern.findall(text.lower()))


def rationale_consistent(record: VQARecord, generated: str) -> bool | None:
    """Do the organs named in the reasoning equal the findings' true host organs?

    None (not scored) for records without findings or with a lesion outside every organ: there is no
    host organ for the rationale to name.
    """
    truth = {f.organ for f in record.findings}
    if not truth or None in truth:
        return None
    at = generated.rfind(ANSWER_MARK)
    reasoning = generated[:at] if at >= 0 else generated
    return organs_named(reasoning, record.modality) == truth


def score_record(record: VQARecord, generated: str, reasoning: bool) -> dict:
    """Everything the evaluation reports about one generated text.

    Keys: ``kind``, ``correct``, ``iou`` (grounding), ``centre_error`` (box-centre distance as a fraction of
    the image side, None without a parsable box), ``centre_error_mm``, ``lesion_size`` (small/medium/large,
    grounding), ``format_valid`` and ``rationale_consistent`` (reasoning prompts only, else None).
    """
    result = {"kind": question_kind(record), **score_answer(record, generated), "centre_error": None,
              "centre_error_mm": None, "lesion_size": None,
              "format_valid": format_valid(generated, reasoning, record.question_type == "grounding"),
              "rationale_consistent": rationale_consistent(record, generated) if reasoning else None}
    if result["kind"] == "grounding":
        truth = record.findings[0]
        result["lesion_size"] = size_category(truth.size_mm)
        boxes = parse_boxes(extract_answer(generated))
        if boxes:
            dx, dy = (offset / BOX_SCALE for offset in centre_offset(boxes[0], truth.box))
            result["centre_error"] = float(np.hypot(dx, dy))
            row_mm, col_mm = record.pixel_spacing_mm
            result["centre_error_mm"] = float(np.hypot(dx * record.width * col_mm, dy * record.height * row_mm))
    return result


@torch.no_grad()
def generate_answers(model, processor, images: ImageCache, records: list[VQARecord], max_new_tokens: int,
                     batch_size: int = 16) -> list[str]:
    """Greedy completions for the records' prompts (reasoning for Easy/Medium, brief for Hard)."""
    from training.medclm.data import load_model_image

    tokenizer = processor.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues each row from its last real token
    outputs: list[str] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            prompts = [render_prompt(tokenizer, build_messages(r.question, reasoning=r.stage != "hard"))
                       for r in chunk]
            pictures = [load_model_image(images.root / record_image_path(r), r.modality) for r in chunk]
            inputs = processor(text=prompts, images=pictures, return_tensors="pt", padding=True)
            generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = generated[:, inputs["input_ids"].shape[1]:]
            outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


def summarise(records: list[VQARecord], generated: list[str]) -> dict:
    """Accuracy overall, per prompt kind (reasoning / brief), per question type; Acc@0.5 for grounding."""
    buckets: dict[str, list[bool]] = defaultdict(list)
    for record, text in zip(records, generated):
        result = score_answer(record, text)
        kind = "brief" if record.stage == "hard" else "reasoning"
        for key in ("overall", kind, f"{kind}/{record.question_type}"):
            buckets[key].append(result["correct"])
        if record.question_type == "presence":
            buckets["yes_no"].append(result["correct"])
        elif record.question_type == "organ":
            buckets["organ"].append(result["correct"])
        elif record.question_type == "grounding":
            buckets["acc_at_0.5"].append(result["correct"])
    return {key: round(sum(v) / len(v), 4) for key, v in sorted(buckets.items())} | {
        "n": len(records)}


def evaluate(model, processor, images: ImageCache, records: list[VQARecord], max_new_tokens: int,
             ) -> tuple[dict, list[dict]]:
    """(metrics, examples) for ``records``; examples hold question, truth and generation."""
    generated = generate_answers(model, processor, images, records, max_new_tokens)
    examples = [{"id": r.id, "question": r.question, "answer": r.answer, "generated": g}
                for r, g in zip(records, generated)]
    return summarise(records, generated), examples
