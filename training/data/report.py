"""``python -m training.data report``: example pictures and the statistics table for docs/data.md."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from training.data.drawing import load_model_image  # noqa: E402

STAGES = ("easy", "medium", "hard")


def _model_view(data_dir: Path, record: dict) -> np.ndarray:
    """The picture the model gets for a record (Easy: the copy with boxes drawn)."""
    path = data_dir / (record["image_easy"] if record["stage"] == "easy" else record["image"])
    return np.asarray(load_model_image(path, record["modality"]))


def pick_examples(records: list[dict], modality: str, count: int = 2) -> list[list[dict]]:
    """``count`` questions of one modality about a lesion, each with its 3 stages; larger lesions first so the
    pictures show them, one question type per example."""
    by_question: dict[str, dict[str, dict]] = {}
    for r in records:
        if r["modality"] == modality and r["findings"] and r["question_type"] in ("organ", "grounding", "finding"):
            by_question.setdefault(r["id"].rsplit("-", 1)[0], {})[r["stage"]] = r
    def size(key: str) -> float:
        return -max(f["size_mm"] for f in next(iter(by_question[key].values()))["findings"])

    chosen, cases, types = [], set(), set()
    for key in sorted(by_question, key=lambda k: (size(k), k)):
        stages = by_question[key]
        first = next(iter(stages.values()))
        if len(stages) == 3 and first["case_id"] not in cases and first["question_type"] not in types:
            chosen.append([stages[s] for s in STAGES])
            cases.add(first["case_id"])
            types.add(first["question_type"])
        if len(chosen) == count:
            break
    return chosen


def draw_examples(data_dir: Path, examples: list[list[dict]], path: Path) -> None:
    """One row per question, one column per stage; the true boxes are outlined in green dashes."""
    fig, axes = plt.subplots(len(examples), 3, figsize=(10, 3.4 * len(examples)), squeeze=False)
    for row, stages in enumerate(examples):
        for col, record in enumerate(stages):
            ax = axes[row][col]
            ax.imshow(_model_view(data_dir, record), cmap="gray")
            for f in record["findings"]:
                x1, y1, x2, y2 = f["box_px"]
                ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, ec="lime", ls="--", lw=1))
            ax.set_title(f"{record['stage']}: {record['question_type']}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def stats_table(stats: dict) -> str:
    """Markdown tables of the dataset statistics."""
    lines = ["| quantity | value |", "|---|---|"]
    for key in ("images", "images_without_lesions", "records", "lesions", "mean_overlap", "skipped"):
        lines.append(f"| {key.replace('_', ' ')} | {stats[key]} |")
    for key in ("images_by_modality", "images_by_split", "records_by_split", "records_by_stage",
                "records_by_question_type", "presence_answers", "lesions_by_label", "lesions_by_host_organ",
                "lesions_by_size"):
        values = ", ".join(f"{k}: {v}" for k, v in sorted(stats[key].items()))
        lines.append(f"| {key.replace('_', ' ')} | {values} |")
    return "\n".join(lines)


def write_report(data_dir: Path, docs_dir: Path) -> str:
    """Write example pictures into ``docs_dir/data_examples`` and return the markdown that shows them."""
    records = [json.loads(line) for s in ("train", "val", "test") for line in (data_dir / f"{s}.jsonl").open()]
    stats = json.loads((data_dir / "stats.json").read_text())
    out = docs_dir / "data_examples"
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for modality in sorted({r["modality"] for r in records}):
        examples = pick_examples(records, modality)
        picture = out / f"{modality}.png"
        draw_examples(data_dir, examples, picture)
        parts.append(f"### {modality.upper()}\n\n![{modality} examples](data_examples/{picture.name})\n")
        for stages in examples:
            for r in stages:
                target = r["target"].replace("\n", "  \n")
                parts.append(f"**{r['id']}** ({r['stage']})  \nQ: {r['question']}  \n{target}\n")
    parts.append("## Dataset statistics\n\n" + stats_table(stats) + "\n")
    return "\n".join(parts)
