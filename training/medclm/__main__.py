"""``python -m training.medclm``: train, evaluate, quantize, export and benchmark MedCLM (a LLaVA model).

Examples:
    python -m training.medclm train --data data/default --out runs/tiny
    python -m training.medclm train --config my.yaml --data data/default --out runs/x --lr=5e-4 --znorm=true
    python -m training.medclm train --data data/default --out runs/tiny --resume runs/tiny/02-easy
    accelerate launch -m training.medclm train --preset base-gpu --data data/default --out runs/base
    python -m training.medclm evaluate --checkpoint runs/tiny/04-hard --data data/default --limit 50
    python -m training.medclm quantize --checkpoint runs/tiny/04-hard --out runs/tiny/04-hard-w8a8
    python -m training.medclm export --checkpoint runs/tiny/04-hard --model-repository model_repository --all-precisions
    python -m training.medclm bench --model-repository model_repository --data data/default --limit 16
    python -m training.medclm image-reliance --checkpoint runs/tiny/05-hard --data data/default
    python -m training.medclm lesion-probe --checkpoint runs/tiny/01-warmup --data data/default
    python -m training.medclm token-probe --checkpoint runs/tiny/04-hard --data data/default
    python -m training.medclm ablation --data data/medclm --out runs/ablation --steps 600
    python -m training.medclm blob-probe
    python -m training.medclm compare --run "#16=runs/long16/eval.json" --run "#20=runs/long20/eval.json" --out docs/x
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

    ablation = sub.add_parser("ablation", help="curriculum x ZNorm at equal compute from one shared warm-up; "
                                               "extra --key=value override the config")
    ablation.add_argument("--data", type=Path, required=True)
    ablation.add_argument("--out", type=Path, required=True, help="runs, evaluations and ablation.{json,md}")
    ablation.add_argument("--steps", type=int, default=600, help="optimiser steps per variant after the warm-up")
    ablation.add_argument("--variants", default="all", help="all, or e.g. sequential,adaptive+znorm")
    ablation.add_argument("--limit", type=int, default=100, help="Medium test questions (plus Hard twins)")
    ablation.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ablation.add_argument("--config", type=Path, help="YAML file of config keys (applied over the preset)")
    ablation.add_argument("--no-progress", action="store_true")

    from training.medclm.engines import DTYPES, ENGINES

    evaluate = sub.add_parser("evaluate", help="greedy evaluation through vLLM (default) or transformers")
    evaluate.add_argument("--checkpoint", type=Path, required=True, help="MedCLM checkpoint folder")
    evaluate.add_argument("--data", type=Path, required=True, help="dataset folder with {split}.jsonl")
    evaluate.add_argument("--split", default="test", choices=("train", "val", "test"))
    evaluate.add_argument("--limit", type=int, help="Medium records to evaluate (plus their Hard twins); default all")
    evaluate.add_argument("--engine", default="vllm", choices=ENGINES)
    evaluate.add_argument("--dtype", default="float32", choices=DTYPES)
    evaluate.add_argument("--quantization", help="vLLM quantization method (compressed-tensors is auto-detected)")
    evaluate.add_argument("--threads", type=int, default=1, help="CPU threads (vLLM binds cores 0..threads-1)")
    evaluate.add_argument("--max-new-tokens", type=int, help="default: the checkpoint's training config")
    evaluate.add_argument("--out", type=Path, help="write OUT.json and OUT.md (default: print JSON only)")

    quantize = sub.add_parser("quantize", help="write a compressed-tensors W8A8 int8 copy of a checkpoint")
    quantize.add_argument("--checkpoint", type=Path, required=True)
    quantize.add_argument("--out", type=Path, required=True)
    quantize.add_argument("--scheme", default="w8a8", choices=("w8a8",))
    quantize.add_argument("--weight-max", type=int, default=None,
                          help="largest |int8 weight| (default 63: exact on AVX2 CPUs without VNNI, see quantize.py)")

    reliance = sub.add_parser("image-reliance", help="loss with the right image vs another image vs a blank one")
    reliance.add_argument("--checkpoint", type=Path, required=True)
    reliance.add_argument("--data", type=Path, required=True)
    reliance.add_argument("--split", default="val", choices=("train", "val", "test"))
    reliance.add_argument("--count", type=int, default=32, help="questions, each on a different image")
    reliance.add_argument("--stage", default="hard", choices=("easy", "medium", "hard"))

    lesions = sub.add_parser("lesion-probe", help="how many held-out lesions the warmed-up tower finds, by size")
    lesions.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint with warm-up heads")
    lesions.add_argument("--data", type=Path, required=True)
    lesions.add_argument("--split", default="test", choices=("train", "val", "test"))
    lesions.add_argument("--limit", type=int, help="images (default all)")

    tokens = sub.add_parser("token-probe", help="teacher-forced accuracy of the rationale's box digits and of its "
                                                "conclusion step, per question type")
    tokens.add_argument("--checkpoint", type=Path, required=True)
    tokens.add_argument("--data", type=Path, required=True)
    tokens.add_argument("--split", default="test", choices=("train", "val", "test"))
    tokens.add_argument("--limit", type=int, default=400, help="Medium records, spread over the split")

    probe = sub.add_parser("blob-probe", help="synthetic control: can the language model learn an answer only the "
                                              "image holds, under each way of training the tower?")
    probe.add_argument("--steps", type=int, default=200, help="answer-loss steps per setting")
    probe.add_argument("--seed", type=int, default=0)

    export = sub.add_parser("export", help="write the checkpoint into a Triton vLLM-backend model repository")
    export.add_argument("--checkpoint", type=Path, required=True)
    export.add_argument("--model-repository", type=Path, required=True)
    export.add_argument("--name", default="medclm", help="base model name; variants get _bf16 / _int8 appended")
    export.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "int8"))
    export.add_argument("--all-precisions", action="store_true", help="export fp32, bf16 and int8 models")
    export.add_argument("--evaluation", type=Path, help="evaluation JSON to record in medclm.json")
    export.add_argument("--root", type=Path, default=Path("."),
                        help="folder the server starts in: model.json's path is written relative to it "
                             "(Triton's vLLM backend passes it to vLLM unchanged); default the current folder")

    compare = sub.add_parser("compare", help="runs' evaluation reports side by side against the targets: "
                                             "OUT.png (bars) and OUT.md (table)")
    compare.add_argument("--run", action="append", required=True, metavar="LABEL=PATH",
                         help="an `evaluate --out` report (.json); repeat for each run")
    compare.add_argument("--out", type=Path, required=True, help="output path without suffix")
    compare.add_argument("--title", help="chart title (default: the split and question counts)")

    bench = sub.add_parser("bench", help="compare fp32 / bf16 / int8 models of a repository: accuracy and tokens/s")
    bench.add_argument("--model-repository", type=Path, required=True)
    bench.add_argument("--data", type=Path, required=True)
    bench.add_argument("--name", default="medclm")
    bench.add_argument("--split", default="test", choices=("train", "val", "test"))
    bench.add_argument("--limit", type=int, default=16)
    bench.add_argument("--threads", type=int, default=1)
    bench.add_argument("--out", type=Path, default=Path("docs/medclm_precision"),
                       help="write OUT.json, OUT.md and OUT.png")
    return parser


def build_config(args: argparse.Namespace, overrides: list[str]) -> MedCLMConfig:
    """Preset → YAML → overrides, or the resumed checkpoint's config → overrides."""
    if args.resume is not None:
        from training.medclm.checkpoint import read_meta

        config = MedCLMConfig.from_dict(read_meta(args.resume)["config"])
        return apply_overrides(config, overrides)
    return load_config(args.preset, args.config, overrides)


def run_command(args: argparse.Namespace) -> dict:
    """Run a non-training command; returns what it prints as JSON."""
    if args.command == "evaluate":
        from training.medclm.eval_report import PREDICTIONS, evaluate_checkpoint, write_report

        report = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.limit, args.engine, args.dtype,
                                     args.quantization, args.threads, args.max_new_tokens)
        if args.out is not None:
            report = {**report, "written": [str(path) for path in write_report(report, args.out)]}
        return {k: v for k, v in report.items() if k not in ("examples", PREDICTIONS)}
    if args.command == "quantize":
        from training.medclm.quantize import DEFAULT_WEIGHT_MAX, quantize_w8a8

        out = quantize_w8a8(args.checkpoint, args.out, args.weight_max or DEFAULT_WEIGHT_MAX)
        return {"out": str(out), "scheme": args.scheme}
    if args.command == "image-reliance":
        from training.medclm.image_reliance import image_reliance

        return image_reliance(args.checkpoint, args.data, args.split, args.count, args.stage)
    if args.command == "lesion-probe":
        from training.medclm.lesion_probe import lesion_probe

        return lesion_probe(args.checkpoint, args.data, args.split, args.limit)
    if args.command == "token-probe":
        from training.medclm.token_probe import token_probe

        return token_probe(args.checkpoint, args.data, args.split, args.limit)
    if args.command == "blob-probe":
        from training.medclm.blob_probe import blob_probe

        return {"settings": blob_probe(args.steps, args.seed)}
    if args.command == "export":
        from training.medclm.export import export_model

        precisions = ("fp32", "bf16", "int8") if args.all_precisions else (args.precision,)
        folders = [export_model(args.checkpoint, args.model_repository, args.name, p, args.evaluation, args.root)
                   for p in precisions]
        return {"models": [str(f) for f in folders]}
    if args.command == "compare":
        from training.medclm.compare import compare_reports

        return compare_reports(args.run, args.out, args.title)
    if args.command == "bench":
        from training.medclm.bench import run_bench

        return run_bench(args.model_repository, args.data, args.name, args.split, args.limit, args.threads, args.out)
    raise MedCLMError(f"unknown command {args.command!r}")


def _overrides(extra: list[str]) -> list[str]:
    """The ``--key=value`` config overrides among the unparsed arguments; anything else is refused."""
    bad = [e for e in extra if not e.startswith("--") or "=" not in e]
    if bad:
        raise MedCLMError(f"unrecognised arguments {bad}; config overrides are written --key=value")
    return extra


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; a refused input prints one line and exits with status 2."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command == "ablation":
            from training.medclm.ablation import parse_variants, run_ablation

            config = load_config(args.preset, args.config, _overrides(extra))
            print(json.dumps(run_ablation(config, args.data, args.out, args.steps, parse_variants(args.variants),
                                          args.limit, progress=not args.no_progress)))
            return 0
        if args.command != "train":
            if extra:
                raise MedCLMError(f"unrecognised arguments {extra}")
            print(json.dumps(run_command(args)))
            return 0
        config = build_config(args, _overrides(extra))
        from training.medclm.trainer import train

        result = train(config, args.data, args.out, resume=args.resume, progress=not args.no_progress)
    except MedCLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    last = result.evaluations[-1] if result.evaluations else {}
    print(json.dumps({"out": str(result.out_dir), "checkpoints": [str(c) for c in result.checkpoints],
                      "seconds": round(result.seconds, 1), "peak_memory_mb": result.peak_memory_mb,
                      "parameters": result.parameters, "evaluation": last}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
