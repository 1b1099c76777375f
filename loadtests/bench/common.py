"""Helpers the benchmark sections share: a logger with elapsed time, load runs whose report files are kept
next to the results, and a repository of the committed organ segmenters only (no VQA model, so a
segmentation service starts in seconds without vLLM)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from loadtests.report import write_report
from loadtests.run import LoadOptions, run_info, run_levels

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED_REPOSITORY = REPO_ROOT / "model_repository"


class Log:
    """Progress lines on stderr, prefixed with the minutes since the benchmark started."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        minutes = (time.monotonic() - self.started) / 60
        print(f"[bench {minutes:5.1f} min] {message}", file=sys.stderr, flush=True)


def segmenter_repository(folder: Path) -> Path:
    """``folder`` holding symlinks to the committed ``organ_seg_*`` models (created once)."""
    folder.mkdir(parents=True, exist_ok=True)
    for model in sorted(COMMITTED_REPOSITORY.glob("organ_seg_*")):
        link = folder / model.name
        if not link.exists():
            link.symlink_to(model.resolve())
    return folder


def measure(options: LoadOptions, runs_dir: Path, name: str, log: Log, client=None, **extra) -> list[dict]:
    """Run ``options``' levels (with ``client`` when given) and keep the CSV/JSON/plots in ``runs_dir/name``."""
    levels = asyncio.run(run_levels(options, client=client, progress=lambda line: log(f"{name}: {line}")))
    write_report(run_info(options, name=name, **extra), levels, runs_dir / name)
    return levels


def slim(level: dict) -> dict:
    """A level's result without the per-request arrays (for the summary JSON)."""
    return {k: v for k, v in level.items() if k not in ("ttfts", "itls", "e2els", "input_lens", "output_lens",
                                                          "errors")}
