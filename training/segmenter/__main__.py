"""``python -m training.segmenter {train,evaluate,export,quantize,build-defaults,bench}``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.segmenter.errors import SegmenterError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.segmenter",
                                     description="Organ segmenter: train, evaluate, export, quantise, benchmark.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one modality's UNet (config overrides: --key=value)")
    p.add_argument("--modality", required=True, choices=["ct", "cxr"])
    p.add_argument("--out", type=Path, required=True, help="directory for checkpoint.pt and metrics.json")
    p.add_argument("--data", type=Path, default=None, help="COCO-style phantom dataset (default: generate)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("evaluate", help="Dice and HD95 per organ on the held-out split")
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--onnx", type=Path)
    p.add_argument("--modality", choices=["ct", "cxr"], default=None)
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("export", help="checkpoint → ONNX, verified against torch with ONNX Runtime")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--modality", choices=["ct", "cxr"], default=None)
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("quantize", help="fp32 ONNX → fp16 and int8 (static QDQ) variants")
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--calibration-count", type=int, default=32)
    p.add_argument("--data", type=Path, default=None)

    p = sub.add_parser("build-defaults", help="train ct+cxr, evaluate, export, quantise, write model_repository")
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--work-dir", type=Path, default=Path("runs/segmenter"))
    p.add_argument("--docs", type=Path, default=Path("docs"))
    p.add_argument("--modalities", default="ct,cxr")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--skip-bench", action="store_true")

    p = sub.add_parser("bench", help="all variants side by side → docs/segmenter.md + plot")
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--docs", type=Path, default=Path("docs"))
    p.add_argument("--rounds", type=int, default=5)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments (unknown ``--key=value`` go to the training config) and run one command."""
    args, extra = _parser().parse_known_args(argv)
    try:
        return _run(args, extra)
    except SegmenterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    from training.segmenter.config import SegmenterConfig, apply_overrides

    if extra and args.command not in ("train", "build-defaults"):
        raise SegmenterError(f"unrecognised arguments: {' '.join(extra)}")

    if args.command == "train":
        from training.segmenter.evaluate import evaluate_cases, format_scores, torch_predictor
        from training.segmenter.train import train

        config = apply_overrides(SegmenterConfig(modality=args.modality), extra)
        result = train(config, args.out, args.data, progress=not args.no_progress)
        scores = evaluate_cases(torch_predictor(result.model), result.test_cases, result.spec,
                                progress=not args.no_progress)
        scores["training_seconds"] = round(result.seconds, 1)
        (args.out / "metrics.json").write_text(json.dumps(scores, indent=2) + "\n")
        print(format_scores(scores))
        print(f"trained in {result.seconds:.0f}s → {result.checkpoint}")
        return 0

    if args.command == "evaluate":
        from training.segmenter.evaluate import format_scores
        from training.segmenter.pipeline import evaluate_file

        scores = evaluate_file(args.checkpoint, args.onnx, args.modality, args.data, not args.no_progress)
        print(format_scores(scores))
        if args.json_out:
            args.json_out.write_text(json.dumps(scores, indent=2) + "\n")
        return 0

    if args.command == "export":
        from training.segmenter.checkpoint import load_checkpoint
        from training.segmenter.export import check_parity, export_onnx
        from training.segmenter.pipeline import held_out_cases, network_inputs

        model, config, spec = load_checkpoint(args.checkpoint, args.modality)
        path = export_onnx(model, config, spec, args.out)
        report = check_parity(model, path, network_inputs(held_out_cases(config, None), spec, 8))
        print(f"exported {path}: max |Δp| vs torch {report.max_abs_diff:.2e} (tolerance {report.tolerance:.0e}), "
              f"labels agree {report.label_agreement:.4%}")
        return 0

    if args.command == "quantize":
        from training.segmenter.dataset import load_cases, split_cases
        from training.segmenter.pipeline import network_inputs, onnx_config_and_spec
        from training.segmenter.quantize import convert_fp16, quantize_int8

        config, spec = onnx_config_and_spec(args.onnx, None)
        train_cases = split_cases(load_cases(config.modality, args.data, config.count, config.data_seed),
                                  config.test_percent)[0]
        args.out_dir.mkdir(parents=True, exist_ok=True)
        print(convert_fp16(args.onnx, args.out_dir / "fp16.onnx"))
        print(quantize_int8(args.onnx, args.out_dir / "int8.onnx",
                            network_inputs(train_cases, spec, args.calibration_count)))
        return 0

    if args.command == "build-defaults":
        from training.segmenter.bench import run_bench
        from training.segmenter.pipeline import build_modality

        summaries = {}
        for modality in [m.strip() for m in args.modalities.split(",") if m.strip()]:
            config = apply_overrides(SegmenterConfig(modality=modality), extra)
            summaries[modality] = build_modality(config, args.model_repository, args.work_dir, args.data)
        if not args.skip_bench:
            _, doc = run_bench(args.model_repository, args.docs)
            print(f"wrote {doc}")
        print(json.dumps({m: {v: round(s["mean_dice"], 4) for v, s in summary["variants"].items()}
                          for m, summary in summaries.items()}))
        return 0

    if args.command == "bench":
        from training.segmenter.bench import render_table, run_bench

        rows, doc = run_bench(args.model_repository, args.docs, args.rounds)
        print(render_table(rows))
        print(f"wrote {doc}")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
