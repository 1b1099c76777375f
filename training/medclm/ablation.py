"""``python -m training.medclm ablation``: the curriculum x ZNorm ablation at equal compute.

One vision warm-up is trained once and shared; from it each variant (sequential, adaptive, mixed, hard-only,
each with and without ZNorm) trains for exactly ``--steps`` optimiser steps of the same batch size and LR
schedule (``curriculum_steps``), and is evaluated through vLLM on the same held-out questions. Every run,
evaluation and the table are written under ``--out``; a finished variant is reused when the command is run
again, so an interrupted ablation continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from training.medclm.config import CURRICULA, MedCLMConfig
from training.medclm.errors import MedCLMError

VARIANTS = tuple((curriculum, znorm) for curriculum in CURRICULA for znorm in (False, True))
# (figure key in an evaluation's "overall" block, column title); Medium prompts unless said otherwise
COLUMNS = (("closed_accuracy", "closed acc"), ("open_accuracy", "open acc"), ("grounding_acc@0.5", "Acc@0.5"),
           ("rationale_consistency", "consistency"), ("format_validity", "format valid"))


def variant_name(curriculum: str, znorm: bool) -> str:
    """Folder and row name of one variant, e.g. ``adaptive+znorm``."""
    return curriculum + ("+znorm" if znorm else "")


def parse_variants(text: str) -> list[tuple[str, bool]]:
    """``all`` or comma-separated names such as ``sequential,adaptive+znorm``."""
    if text == "all":
        return list(VARIANTS)
    by_name = {variant_name(c, z): (c, z) for c, z in VARIANTS}
    chosen = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        if name not in by_name:
            raise MedCLMError(f"unknown variant {name!r}; variants: all, {', '.join(by_name)}")
        chosen.append(by_name[name])
    return chosen


def _done(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def run_ablation(config: MedCLMConfig, data_dir: Path, out_dir: Path, steps: int, variants: list[tuple[str, bool]],
                 limit: int = 100, threads: int = 2, progress: bool = True) -> dict:
    """Train the shared warm-up and every variant, evaluate them, write ``ablation.{json,md}``; returns the rows."""
    from training.medclm.eval_report import evaluate_checkpoint, write_report
    from training.medclm.trainer import train

    if steps < 3:
        raise MedCLMError("--steps must be at least 3 (sequential has three phases)")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    # no in-process evaluations: every variant is evaluated once, the same way, through vLLM
    base = dataclasses.replace(config, curriculum_steps=steps, eval_every=0, eval_records=0)
    warmup_dir = out_dir / "warmup"
    warmup = warmup_dir / "01-warmup"
    if not (warmup / "medclm.json").is_file():
        if base.warmup_steps <= 0:
            raise MedCLMError("the ablation shares a vision warm-up: warmup_steps must be > 0")
        started = time.perf_counter()
        train(dataclasses.replace(base, curriculum="mixed"), data_dir, warmup_dir, progress=progress, stop_after=1)
        (warmup_dir / "seconds.json").write_text(json.dumps({"seconds": round(time.perf_counter() - started, 1)}))
    rows = []
    for curriculum, znorm in variants:
        name = variant_name(curriculum, znorm)
        run_dir = out_dir / name
        summary_path = run_dir / "summary.json"
        summary = _done(summary_path)
        if summary is None:
            started = time.perf_counter()
            result = train(dataclasses.replace(base, curriculum=curriculum, znorm=znorm), data_dir, run_dir,
                           resume=warmup, progress=progress)
            seconds = time.perf_counter() - started
            final = result.checkpoints[-1]
            report = evaluate_checkpoint(final, data_dir, "test", limit, threads=threads)
            write_report(report, run_dir / "evaluation")
            summary = {"variant": name, "curriculum": curriculum, "znorm": znorm, "checkpoint": str(final),
                       "train_seconds": round(seconds, 1), "steps": steps,
                       "reasoning": report["reasoning"]["overall"], "brief": report["brief"]["overall"]}
            summary_path.write_text(json.dumps(summary, indent=1))
        rows.append(summary)
    table = {"steps": steps, "warmup_steps": base.warmup_steps, "batch_size": base.batch_size,
             "questions_per_image": base.questions_per_image, "limit": limit, "rows": rows}
    (out_dir / "ablation.json").write_text(json.dumps(table, indent=1))
    (out_dir / "ablation.md").write_text(render_table(table))
    return table


def render_table(table: dict) -> str:
    """The ablation as a markdown table (Medium-prompt figures, plus the Hard-prompt accuracy)."""
    lines = [f"Shared warm-up {table['warmup_steps']} steps, then {table['steps']} steps per variant (batch "
             f"{table['batch_size']} sequences x {table['questions_per_image']} questions); test split, "
             f"{table['limit']} Medium questions and their Hard twins, greedy through vLLM.", "",
             "| variant | " + " | ".join(title for _, title in COLUMNS) + " | Hard-style acc | train s |",
             "|---" * (len(COLUMNS) + 3) + "|"]
    for row in table["rows"]:
        cells = [_cell(row["reasoning"].get(key)) for key, _ in COLUMNS]
        lines.append(f"| {row['variant']} | " + " | ".join(cells) +
                     f" | {_cell(row['brief'].get('accuracy'))} | {row['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    return "–" if value is None else f"{value:.3f}"
