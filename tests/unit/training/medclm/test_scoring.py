"""Scoring of generated texts: the data's own targets score perfectly; hedges, bad shapes and wrong organs do not."""

from __future__ import annotations

import json

import pytest

from training.medclm.data import load_records
from training.medclm.engines import Generation
from training.medclm.eval_report import (PREDICTIONS, aggregate, build_report, load_eval_records, summarise_scores,
                                         write_report)
from training.medclm.evaluate import format_valid, organs_named, rationale_consistent, score_record


@pytest.fixture(scope="module")
def val(tiny_data):
    return load_records(tiny_data / "val.jsonl")


def test_every_target_scores_as_correct_well_formed_and_consistent(val):
    for record in (r for r in val if r.stage in ("medium", "hard")):
        result = score_record(record, record.target, reasoning=record.stage == "medium")
        assert result["correct"] and result["format_valid"], (record.id, record.target)
        assert result["rationale_consistent"] in (True, None), record.id
        if record.question_type == "grounding":
            assert result["iou"] == 1.0 and result["centre_error"] == 0.0 and result["lesion_size"]


def test_closed_hedge_and_malformed_outputs_are_wrong(tiny_records):
    presence = next(r for r in tiny_records if r.question_type == "presence" and r.stage == "hard")
    assert not score_record(presence, "Answer: yes or no", reasoning=False)["correct"]
    assert not format_valid("Reasoning:\n2. x\nAnswer: yes", reasoning=True, grounding=False)  # numbering
    assert not format_valid("Answer: yes", reasoning=True, grounding=False)  # reasoning missing
    assert not format_valid("Answer: <box>[1, 2]</box>", reasoning=False, grounding=True)  # no parsable box
    assert format_valid("Answer: <box>[10, 20, 30, 40]</box>", reasoning=False, grounding=True)


def test_rationale_naming_another_organ_is_inconsistent(val):
    record = next(r for r in val if r.stage == "medium" and len(r.findings) == 1 and r.findings[0].organ)
    organ = record.findings[0].organ
    other = "spleen" if organ != "spleen" and record.modality == "ct" else "heart"
    assert organs_named(f"In the Right Kidney and the {organ}.", "ct") >= ({"right kidney"} if record.modality == "ct"
                                                                          else set())
    assert rationale_consistent(record, record.target.replace(organ, other)) is False
    assert rationale_consistent(record, "Reasoning:\n1. Nothing.\nAnswer: x") is False


def test_aggregate_and_selection(tiny_data, val):
    records = load_eval_records(tiny_data, "val", limit=3)
    medium = [r for r in records if r.stage == "medium"]
    assert len(medium) == 3 and len(records) == 6
    scores = [score_record(r, r.target, reasoning=True) for r in medium]
    summary = summarise_scores(medium, scores)
    assert summary["overall"]["n"] == 3 and summary["overall"]["format_validity"] == 1.0
    assert aggregate([])["accuracy"] is None


def test_report_writes_every_reply_with_its_scores(tiny_data, tmp_path):
    records = load_eval_records(tiny_data, "val", limit=3)
    # The data's own targets, except the first reply, which answers nothing.
    texts = ["Answer: nothing"] + [r.target for r in records[1:]]
    generations = [Generation(text, [1] * len(text)) for text in texts]
    report = build_report(tmp_path / "ckpt", {"stage": "hard"}, records, generations, 2.0, engine="test",
                          dtype="float32", quantization=None, split="val")
    written = write_report(report, tmp_path / "evaluation")
    assert [p.name for p in written] == ["evaluation.json", "evaluation.md", "evaluation.predictions.jsonl"]
    assert PREDICTIONS not in json.loads(written[0].read_text())  # the summary stays small
    rows = [json.loads(line) for line in written[2].read_text().splitlines()]
    assert [row["id"] for row in rows] == [r.id for r in records]
    assert [row["generated"] for row in rows] == texts
    assert [row["style"] for row in rows] == ["brief" if r.stage == "hard" else "reasoning" for r in records]
    assert not rows[0]["correct"] and not rows[0]["format_valid"]
    assert all(row["correct"] and row["format_valid"] for row in rows[1:])
