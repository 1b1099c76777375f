"""Run report: the loss history as JSON lines and a loss-curve plot, rewritten at the end of every phase."""

from __future__ import annotations

import json
from pathlib import Path


def write_run_report(out_dir: Path, history: list[dict], evaluations: list[dict]) -> Path:
    """Write ``history.jsonl``, ``evaluations.jsonl`` and ``loss.png`` into ``out_dir``; returns the plot path."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on training machines
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    (out_dir / "evaluations.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evaluations))
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 4))
    for phase in dict.fromkeys(h["phase"] for h in history):
        rows = [h for h in history if h["phase"] == phase]
        key = "loss" if phase == "warmup" else "lm"
        ax_loss.plot([h["step"] for h in rows], [h.get(key, h["loss"]) for h in rows],
                     label=f"{phase} ({'dense' if phase == 'warmup' else 'weighted LM'})")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_loss.set_title("training loss")
    for metric in ("yes_no", "organ", "acc_at_0.5", "overall"):
        rows = [e for e in evaluations if metric in e]
        if rows:
            ax_eval.plot([e["step"] for e in rows], [e[metric] for e in rows], marker="o", label=metric)
    ax_eval.set_xlabel("step")
    ax_eval.set_ylim(0, 1)
    ax_eval.set_title("greedy evaluation on val")
    if ax_eval.lines:
        ax_eval.legend()
    fig.tight_layout()
    path = out_dir / "loss.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
