"""Fast in-process evaluation: greedy decoding through the standard transformers path, then scoring.

Generation goes through ``LlavaProcessor`` + ``generate`` exactly as a user of the checkpoint would call
it, so it also checks that the checkpoint works without any of the training code. Scoring follows
REFERENCE.md: normalised exact match of the answer line; a closed answer containing both "yes" and "no"
is wrong; grounding scores Acc@0.5 (IoU ≥ 0.5 against the true box).
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch

from training.data.boxes import box_iou, parse_boxes
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
