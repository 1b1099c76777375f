"""``python -m training.data build``: detection dataset → MedCLM VQA records with chain-of-thought."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from training.data.anatomy import MODALITIES
from training.data.errors import DataError, ErrorPolicy


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build VQA records from a detection dataset")
    build.add_argument("--source", choices=("phantom", "coco", "deeplesion", "vindr"), required=True)
    build.add_argument("--out", type=Path, required=True, help="output folder (images/, *.jsonl, stats.json)")
    build.add_argument("--modality", default="ct,cxr",
                       help="phantom: modalities to generate; coco: modality for images that do not name one")
    build.add_argument("--count", type=int, default=200, help="phantom: images per modality")
    build.add_argument("--seed", type=int, default=0, help="phantoms, question phrasing and splits")
    build.add_argument("--annotations", type=Path, help="coco: annotations JSON")
    build.add_argument("--csv", type=Path, help="deeplesion: DL_info.csv; vindr: the annotation CSV")
    build.add_argument("--images", type=Path, help="image folder (coco default: the JSON's folder)")
    build.add_argument("--masks", type=Path, help="coco: organ mask folder (PNG named like the images)")
    build.add_argument("--organs", type=Path, help="organs.json (label → organ name) for the masks")
    build.add_argument("--organ-masks", choices=("given", "segmenter", "none"), default=None,
                       help="where organ masks come from (default: given when the source has masks, else none)")
    build.add_argument("--model-repository", type=Path, default=Path("model_repository"),
                       help="segmenter models for --organ-masks segmenter")
    build.add_argument("--segmenter-variant", default="fp32", choices=("fp32", "fp16", "int8"))
    build.add_argument("--pixel-spacing", type=float, nargs=2, metavar=("ROW_MM", "COL_MM"),
                       help="vindr: spacing for PNG images without a header")
    build.add_argument("--min-overlap", type=float, default=0.3,
                       help="minimum fraction of a lesion inside an organ to call it the host")
    build.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                       help="stop at the first bad input, or skip it and count it in stats.json")
    build.add_argument("--writer", choices=("template", "openai"), default="template")
    build.add_argument("--openai-base-url", help="OpenAI-compatible endpoint for --writer openai")
    build.add_argument("--openai-model", help="model name for --writer openai")
    build.add_argument("--workers", type=int, default=2)
    build.add_argument("--no-progress", action="store_true")
    report = sub.add_parser("report", help="example pictures and statistics (markdown) for docs/data.md")
    report.add_argument("--data", type=Path, required=True, help="a built dataset folder")
    report.add_argument("--docs", type=Path, default=Path("docs"), help="where pictures are written")
    return parser


def run_build(args: argparse.Namespace) -> dict:
    """Load the source dataset, then build records; returns the statistics."""
    from training.data.adapters.coco import load_coco, load_organ_names
    from training.data.adapters.deeplesion import load_deeplesion
    from training.data.adapters.vindr import load_vindr
    from training.data.build import BuildOptions, build_dataset

    policy = ErrorPolicy(args.on_error)
    out: Path = args.out
    organ_names = None
    has_masks = False
    if args.source == "phantom":
        from training.data.phantoms import write_phantom_dataset

        modalities = [m.strip() for m in args.modality.split(",") if m.strip()]
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown or not modalities:
            raise DataError(f"unknown modality {unknown or args.modality!r}; choose from {', '.join(MODALITIES)}")
        if args.count < 1:
            raise DataError("--count must be at least 1")
        annotations = write_phantom_dataset(out, modalities, args.count, args.seed, workers=args.workers,
                                            progress=not args.no_progress)
        cases = load_coco(annotations, masks_dir=out / "masks", policy=policy)
        organ_names, has_masks = load_organ_names(out / "organs.json"), True
    elif args.source == "coco":
        if args.annotations is None:
            raise DataError("--source coco needs --annotations")
        default = args.modality if args.modality in MODALITIES else None
        cases = load_coco(args.annotations, args.images, args.masks, default, policy)
        if args.masks is not None:
            organ_names = load_organ_names(args.organs or args.annotations.parent / "organs.json")
            has_masks = True
    else:
        if args.csv is None or args.images is None:
            raise DataError(f"--source {args.source} needs --csv and --images")
        if args.source == "deeplesion":
            cases = load_deeplesion(args.csv, args.images, policy)
        else:
            cases = load_vindr(args.csv, args.images, tuple(args.pixel_spacing) if args.pixel_spacing else None,
                               policy)
    organ_source = args.organ_masks or ("given" if has_masks else "none")
    if organ_source == "given" and not has_masks:
        raise DataError(f"--organ-masks given, but the {args.source} source has no mask folder (--masks)")

    segmenter_factory = None
    if organ_source == "segmenter":
        from functools import partial

        from training.segmenter.onnx_segmenter import OnnxOrganSegmenter

        segmenter_factory = partial(OnnxOrganSegmenter, args.model_repository, args.segmenter_variant)
        try:  # fail before any work if the models are missing, not inside a worker
            probe = segmenter_factory()
            for modality in sorted({c.modality for c in cases}):
                probe.load(modality)
        except (OSError, ValueError) as exc:
            raise DataError(f"organ segmenter unavailable: {exc}") from None

    writer = None
    if args.writer == "openai":
        from training.data.rationale import OpenAIRationaleWriter

        if not (args.openai_base_url and args.openai_model):
            raise DataError("--writer openai needs --openai-base-url and --openai-model")
        writer = OpenAIRationaleWriter(args.openai_base_url, args.openai_model)

    options = BuildOptions(out_dir=out, seed=args.seed, organ_source=organ_source, min_overlap=args.min_overlap,
                           on_error=args.on_error, workers=args.workers, progress=not args.no_progress)
    if organ_names is not None:
        options.organ_names = organ_names
    return build_dataset(cases, options, segmenter_factory, writer, policy)


def main(argv: list[str] | None = None) -> int:
    """Entry point; exits 2 with a one-line message on bad input."""
    args = _parser().parse_args(argv)
    if args.command == "report":
        from training.data.report import write_report

        print(write_report(args.data, args.docs))
        return 0
    started = time.perf_counter()
    try:
        stats = run_build(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    summary = {k: stats[k] for k in ("images", "records", "records_by_split", "presence_answers", "skipped")}
    print(json.dumps({"out": str(args.out), "seconds": round(elapsed, 1), **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
