"""``python -m training.medclm evaluate``: a checkpoint on a data split through vLLM (or transformers).

Main figures use Medium records (reasoning prompt, clean image, the model must state the box itself);
their Hard twins (same question, answer-only prompt) give the Hard-style accuracy. Every figure is broken
down per modality and per question type and written as JSON plus a markdown table.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from training.data.records import VQARecord
from training.medclm.checkpoint import read_meta
from training.medclm.data import check_images, load_records
from training.medclm.engines import make_generator, record_requests
from training.medclm.errors import MedCLMError
from training.medclm.evaluate import score_record, select_eval_records

SPLITS = ("train", "val", "test")
SIZES = ("small", "medium", "large")
PREDICTIONS = "predictions"  # report key of the per-reply list; kept out of OUT.json (OUT.predictions.jsonl)


def load_eval_records(data_dir: Path, split: str = "test", limit: int | None = None) -> list[VQARecord]:
    """Medium records of ``split`` (``limit`` of them spread evenly, default all) and their Hard twins."""
    data_dir = Path(data_dir)
    if split not in SPLITS:
        raise MedCLMError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if not data_dir.is_dir():
        raise MedCLMError(f"data folder {data_dir} does not exist")
    records = load_records(data_dir / f"{split}.jsonl")
    medium = sum(r.stage == "medium" for r in records)
    if not medium:
        raise MedCLMError(f"{data_dir / f'{split}.jsonl'} has no Medium records to evaluate")
    chosen = select_eval_records(records, medium if limit is None else limit)
    check_images(data_dir, chosen, need_masks=False)
    return chosen


def rate(values: list) -> float | None:
    """Share of true values (None ignored), rounded to 4 places; None when nothing is left."""
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def aggregate(scores: list[dict]) -> dict:
    """Figures of one group of :func:`score_record` results (None where the group has no such question)."""
    by_kind = defaultdict(list)
    for s in scores:
        by_kind[s["kind"]].append(s)
    grounding = by_kind["grounding"]
    errors = [s["centre_error"] for s in grounding if s["centre_error"] is not None]
    errors_mm = [s["centre_error_mm"] for s in grounding if s["centre_error_mm"] is not None]
    block = {
        "n": len(scores),
        "accuracy": rate([s["correct"] for s in scores if s["kind"] != "grounding"]),
        "closed_accuracy": rate([s["correct"] for s in by_kind["closed"]]),
        "open_accuracy": rate([s["correct"] for s in by_kind["open"]]),
        "grounding_acc@0.5": rate([s["iou"] >= 0.5 for s in grounding]),
        "grounding_acc@0.3": rate([s["iou"] >= 0.3 for s in grounding]),
        # Median over predictions that have a parsable box; format_validity says how many do.
        "median_centre_error": round(statistics.median(errors), 4) if errors else None,
        "median_centre_error_mm": round(statistics.median(errors_mm), 2) if errors_mm else None,
        "rationale_consistency": rate([s["rationale_consistent"] for s in scores]),
        "format_validity": rate([s["format_valid"] for s in scores]),
    }
    for size in SIZES:
        block[f"grounding_acc@0.5_{size}"] = rate([s["iou"] >= 0.5 for s in grounding if s["lesion_size"] == size])
    return block


def summarise_scores(records: list[VQARecord], scores: list[dict]) -> dict:
    """``overall``, ``by_modality`` and ``by_question_type`` blocks of :func:`aggregate`."""
    groups: dict[str, dict[str, list]] = {"by_modality": defaultdict(list), "by_question_type": defaultdict(list)}
    for record, score in zip(records, scores):
        groups["by_modality"][record.modality].append(score)
        groups["by_question_type"][record.question_type].append(score)
    return {"overall": aggregate(scores),
            **{name: {key: aggregate(v) for key, v in sorted(g.items())} for name, g in groups.items()}}


def build_report(checkpoint: Path, meta: dict, records: list[VQARecord], generations: list, seconds: float,
                 **info) -> dict:
    """Score generations of :func:`load_eval_records` records; ``info`` (engine, dtype, ...) is copied in."""
    tokens = sum(len(g.token_ids) for g in generations)
    report = {"checkpoint": str(checkpoint), "stage": meta.get("stage"), **info,
              "timing": {"seconds": round(seconds, 2), "generated_tokens": tokens, "requests": len(records),
                         "tokens_per_second": round(tokens / seconds, 1) if seconds else None}}
    scores = [score_record(r, g.text, reasoning=r.stage != "hard") for r, g in zip(records, generations)]
    for style, stage in (("reasoning", "medium"), ("brief", "hard")):
        chosen = [(r, s) for r, s in zip(records, scores) if r.stage == stage]
        report[style] = summarise_scores([r for r, _ in chosen], [s for _, s in chosen])
    report["examples"] = [{"id": r.id, "question": r.question, "answer": r.answer, "generated": g.text}
                          for r, g in list(zip(records, generations))[:6]]
    # Every reply with its scores, for reading failures; write_report puts them in their own JSONL file.
    report[PREDICTIONS] = [{"id": r.id, "style": "brief" if r.stage == "hard" else "reasoning",
                            "modality": r.modality, "question_type": r.question_type, "question": r.question,
                            "answer": r.answer, "generated": g.text, **s}
                           for r, g, s in zip(records, generations, scores)]
    return report


def evaluate_checkpoint(checkpoint: Path, data_dir: Path, split: str = "test", limit: int | None = None,
                        engine: str = "vllm", dtype: str = "float32", quantization: str | None = None,
                        threads: int = 1, max_new_tokens: int | None = None, generator=None) -> dict:
    """Generate greedily for the chosen records and score them; returns the report dict.

    Inputs are checked before any engine loads. ``generator`` reuses an already loaded engine.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise MedCLMError(f"checkpoint {checkpoint} does not exist")
    meta = read_meta(checkpoint)
    records = load_eval_records(data_dir, split, limit)
    max_new_tokens = max_new_tokens or meta["config"]["max_new_tokens"]
    own = generator is None
    generator = generator or make_generator(engine, checkpoint, dtype, quantization, threads)
    try:
        generations = generator.generate(record_requests(generator.tokenizer, data_dir, records), max_new_tokens)
    finally:
        if own:
            generator.close()
    return build_report(checkpoint, meta, records, generations, generator.last_seconds, engine=engine, dtype=dtype,
                        quantization=quantization, split=split, max_new_tokens=max_new_tokens)


def _cell(value, digits: int = 3) -> str:
    return "–" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def hard_style_accuracy(brief: dict) -> float | None:
    """A group's Hard-style (answer-only) figure: its accuracy, or Acc@0.5 for a grounding-only group."""
    return brief.get("accuracy") if brief.get("accuracy") is not None else brief.get("grounding_acc@0.5")


def render_markdown(report: dict) -> str:
    """Markdown tables: reasoning-prompt figures per group, then Hard-style (answer-only) accuracy."""
    head = ("| group | n | closed acc | open acc | Acc@0.5 | Acc@0.3 | Acc@0.5 small / medium / large "
            "| median centre err (mm) | rationale consistency | format valid | Hard-style acc |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    reasoning, brief = report["reasoning"], report["brief"]
    rows = [("overall", reasoning["overall"], brief["overall"])]
    for section in ("by_modality", "by_question_type"):
        rows += [(key, block, brief[section].get(key, {})) for key, block in reasoning[section].items()]
    lines = []
    for name, r, b in rows:
        sizes = " / ".join(_cell(r[f"grounding_acc@0.5_{s}"], 2) for s in SIZES)
        hard = hard_style_accuracy(b)
        lines.append(f"| {name} | {r['n']} | {_cell(r['closed_accuracy'])} | {_cell(r['open_accuracy'])} | "
                     f"{_cell(r['grounding_acc@0.5'])} | {_cell(r['grounding_acc@0.3'])} | {sizes} | "
                     f"{_cell(r['median_centre_error_mm'], 1)} | {_cell(r['rationale_consistency'])} | "
                     f"{_cell(r['format_validity'])} | {_cell(hard)} |")
    timing = report["timing"]
    title = (f"Evaluation of `{report['checkpoint']}` on {report['split']} ({report['engine']}, {report['dtype']}"
             f"{', ' + report['quantization'] if report['quantization'] else ''}): "
             f"{timing['requests']} prompts, {timing['tokens_per_second']} generated tokens/s\n\n")
    note = ("\nReasoning prompts (Medium records); Hard-style = the same questions with the answer-only prompt "
            "(accuracy, Acc@0.5 for grounding). Closed = yes/no (both words = wrong); open = normalised exact "
            "match.\n")
    return title + head + "\n".join(lines) + "\n" + note


def write_report(report: dict, out: Path) -> list[Path]:
    """Write ``out.json`` and ``out.md`` (``out`` without suffix), and each reply with its scores to
    ``out.predictions.jsonl``; returns the three paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".json"), out.with_suffix(".md"), out.with_suffix(".predictions.jsonl")]
    paths[0].write_text(json.dumps({k: v for k, v in report.items() if k != PREDICTIONS}, indent=2) + "\n")
    paths[1].write_text(render_markdown(report))
    paths[2].write_text("".join(json.dumps(p) + "\n" for p in report[PREDICTIONS]))
    return paths
