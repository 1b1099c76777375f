"""Runs side by side against the issue's targets (``python -m training.medclm compare``).

Reads the ``evaluate --out`` reports (``.json``) of several runs and writes one grouped bar chart with the targets
as dashed lines, and the same figures as a markdown table, so that the comparisons in ``docs/medclm.md`` can be
redrawn by one command from the runs' own reports.
"""

from __future__ import annotations

import json
from pathlib import Path

from training.medclm.errors import MedCLMError
from training.medclm.eval_report import hard_style_accuracy

# The targets of the MedCLM model issue, on Medium-style (reasoning) prompts of the held-out test split.
TARGETS = {"closed_accuracy": 0.95, "open_accuracy": 0.90, "grounding_acc@0.5": 0.40,
           "rationale_consistency": 0.90, "format_validity": 0.99}
HARD_STYLE = "hard_style_accuracy"
# (report key, short label) in the order the chart and the table show them.
FIGURES = (("closed_accuracy", "closed"), ("open_accuracy", "open"), ("grounding_acc@0.5", "Acc@0.5"),
           ("grounding_acc@0.3", "Acc@0.3"), ("grounding_acc@0.5_large", "Acc@0.5 large"),
           ("rationale_consistency", "consistency"), ("format_validity", "format"), (HARD_STYLE, "Hard-style"))


def parse_run(spec: str) -> tuple[str, Path]:
    """``LABEL=PATH`` → (label, path); a bare ``PATH`` is labelled by the run folder that holds the report."""
    label, sep, path = spec.partition("=")
    if not sep:
        path = spec
        label = Path(spec).parent.name or Path(spec).stem
    if not label or not path:
        raise MedCLMError(f"--run {spec!r}: write LABEL=PATH to an evaluation report (.json)")
    return label, Path(path)


def load_figures(path: Path) -> dict[str, float | None]:
    """The overall reasoning-prompt figures of one evaluation report, its Hard-style accuracy, size and split."""
    if not path.is_file():
        raise MedCLMError(f"no evaluation report at {path} (write one with `evaluate ... --out`)")
    try:
        report = json.loads(path.read_text())
        overall, brief = report["reasoning"]["overall"], report["brief"]["overall"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise MedCLMError(f"{path} is not an evaluation report ({type(error).__name__}: {error})") from error
    figures = {key: overall.get(key) for key, _ in FIGURES if key != HARD_STYLE}
    figures[HARD_STYLE] = hard_style_accuracy(brief)
    return {"n": overall.get("n"), "split": report.get("split"), **figures}


def render_table(figures: dict[str, dict]) -> str:
    """Markdown: one row per run, one column per figure, the targets in the header."""
    def head(key: str, label: str) -> str:
        return f"{label} (≥ {TARGETS[key]:.2f})" if key in TARGETS else label

    lines = ["| run | n | " + " | ".join(head(key, label) for key, label in FIGURES) + " |",
             "|---|---|" + "---|" * len(FIGURES)]
    for run, values in figures.items():
        cells = ["–" if values[key] is None else f"{values[key]:.3f}" for key, _ in FIGURES]
        lines.append(f"| {run} | {values['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(figures: dict[str, dict], out: Path, title: str) -> None:
    """Grouped bars (one group per figure, one bar per run) with each target as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    width = 0.8 / len(figures)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.2 * len(FIGURES) + 3.0), 4.3))
    for i, (run, values) in enumerate(figures.items()):
        xs = [j + (i - (len(figures) - 1) / 2) * width for j in range(len(FIGURES))]
        bars = ax.bar(xs, [values[key] or 0.0 for key, _ in FIGURES], width, label=run)
        ax.bar_label(bars, fmt="%.2f", fontsize=6)
    for j, (key, _) in enumerate(FIGURES):
        if key in TARGETS:
            ax.hlines(TARGETS[key], j - 0.45, j + 0.45, colors="k", linestyles="--",
                      label="target" if j == 0 else None)
    ax.set_xticks(range(len(FIGURES)), [label for _, label in FIGURES], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def compare_reports(specs: list[str], out: Path, title: str | None = None) -> dict:
    """Write ``out.png`` and ``out.md`` comparing the runs' reports; returns the figures and the written paths."""
    runs = [parse_run(spec) for spec in specs]
    labels = [label for label, _ in runs]
    if len(set(labels)) != len(labels):
        raise MedCLMError(f"two runs share a label: {labels}; name them with LABEL=PATH")
    figures = {label: load_figures(path) for label, path in runs}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png, md = out.with_suffix(".png"), out.with_suffix(".md")
    splits = ", ".join(sorted({str(values["split"]) for values in figures.values()}))
    counts = ", ".join(str(n) for n in sorted({values["n"] for values in figures.values() if values["n"] is not None}))
    default_title = f"{splits} split, {counts} reasoning questions per run"
    plot(figures, png, title or default_title)
    md.write_text(render_table(figures))
    return {"figures": figures, "written": [str(png), str(md)]}
