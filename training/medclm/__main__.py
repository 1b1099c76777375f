"""``python -m training.medclm train``: train MedCLM (a LLaVA model) on a VQA dataset built by training.data.

Examples:
    python -m training.medclm train --data data/default --out runs/tiny
    python -m training.medclm train --config my.yaml --data data/default --out runs/x --lr=5e-4 --znorm=true
    python -m training.medclm train --data data/default --out runs/tiny --resume runs/tiny/02-easy
    accelerate launch -m training.medclm train --preset base-gpu --data data/default --out runs/base
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.medclm.config import PRESETS, MedCLMConfig, apply_overrides, load_config
from training.medclm.errors import MedCLMError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.medclm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (or resume) a MedCLM model; extra --key=value override the config")
    train.add_argument("--data", type=Path, required=True, help="dataset folder with train.jsonl and val.jsonl")
    train.add_argument("--out", type=Path, required=True, help="run folder; one checkpoint per phase is written")
    train.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="starting config (default tiny)")
    train.add_argument("--config", type=Path, help="YAML file of config keys (applied over the preset)")
    train.add_argument("--resume", type=Path, help="checkpoint folder to continue from (its config is used)")
    train.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return parser


def build_config(args: argparse.Namespace, overrides: list[str]) -> MedCLMConfig:
    """Preset → YAML → overrides, or the resumed checkpoint's config → overrides."""
    if args.resume is not None:
        from training.medclm.checkpoint import read_meta

        config = MedCLMConfig.from_dict(read_meta(args.resume)["config"])
        return apply_overrides(config, overrides)
    return load_config(args.preset, args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; a refused input prints one line and exits with status 2."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    try:
        bad = [e for e in extra if not e.startswith("--") or "=" not in e]
        if bad:
            raise MedCLMError(f"unrecognised arguments {bad}; config overrides are written --key=value")
        config = build_config(args, extra)
        from training.medclm.trainer import train

        result = train(config, args.data, args.out, resume=args.resume, progress=not args.no_progress)
    except MedCLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    last = result.evaluations[-1] if result.evaluations else {}
    print(json.dumps({"out": str(result.out_dir), "checkpoints": [str(c) for c in result.checkpoints],
                      "seconds": round(result.seconds, 1), "parameters": result.parameters, "evaluation": last}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
