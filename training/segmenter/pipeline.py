"""The steps the CLI strings together: evaluate a checkpoint or ONNX file, export + verify, build variants,
and the whole ``build-defaults`` run that regenerates model_repository's organ segmenters."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

from training.data.anatomy import organs_for
from training.segmenter.checkpoint import load_checkpoint
from training.segmenter.config import SegmenterConfig
from training.segmenter.dataset import SegmentationCase, load_cases, split_cases
from training.segmenter.errors import SegmenterError
from training.segmenter.evaluate import evaluate_cases, format_scores, onnx_predictor, torch_predictor
from training.segmenter.export import check_parity, export_onnx, ort_session, read_metadata
from training.segmenter.preprocessing import PreprocessSpec, preprocess_image
from training.segmenter.quantize import convert_fp16, quantize_int8
from training.segmenter.repository import VARIANTS, model_name, write_model_dir
from training.segmenter.train import train

CALIBRATION_IMAGES = 32  # enough to pin activation ranges of a phantom UNet; more only slows calibration


def held_out_cases(config: SegmenterConfig, data_dir: Path | None, progress: bool = False) -> list[SegmentationCase]:
    """The test split the model was evaluated on (regenerated from the recorded data settings)."""
    return split_cases(load_cases(config.modality, data_dir, config.count, config.data_seed, progress),
                       config.test_percent)[1]


def onnx_config_and_spec(path: Path, modality: str | None) -> tuple[SegmenterConfig, PreprocessSpec]:
    """Training config and preprocessing recorded in an exported model's metadata."""
    metadata = read_metadata(path)
    if "medclm.training_config" not in metadata or "medclm.preprocessing" not in metadata:
        raise SegmenterError(f"ONNX model {path} has no MedCLM segmenter metadata")
    config = SegmenterConfig.from_dict(json.loads(metadata["medclm.training_config"]))
    if modality is not None and modality != config.modality:
        raise SegmenterError(f"ONNX model {path} is for modality {config.modality!r}, not {modality!r}")
    return config, PreprocessSpec.from_json(metadata["medclm.preprocessing"])


def evaluate_file(checkpoint: Path | None, onnx_path: Path | None, modality: str | None,
                  data_dir: Path | None = None, progress: bool = True) -> dict:
    """Dice/HD95 of a checkpoint or an ONNX model on its held-out split."""
    if (checkpoint is None) == (onnx_path is None):
        raise SegmenterError("give exactly one of --checkpoint or --onnx")
    if checkpoint is not None:
        model, config, spec = load_checkpoint(checkpoint, modality)
        predictor = torch_predictor(model)
    else:
        config, spec = onnx_config_and_spec(onnx_path, modality)
        predictor = onnx_predictor(ort_session(onnx_path))
    cases = held_out_cases(config, data_dir, progress)
    return evaluate_cases(predictor, cases, spec, progress=progress)


def network_inputs(cases: list[SegmentationCase], spec: PreprocessSpec, limit: int) -> np.ndarray:
    """Preprocessed [N,1,H,W] inputs of the first ``limit`` cases."""
    if not cases:
        return np.zeros((0, 1, spec.input_height, spec.input_width), np.float32)
    return np.stack([preprocess_image(c.image, spec)[0] for c in cases[:limit]])


def versions() -> dict[str, str]:
    """Library versions recorded in provenance."""
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(), "numpy": np.__version__}


def build_modality(config: SegmenterConfig, repository: Path, work_dir: Path, data_dir: Path | None = None,
                   progress: bool = True) -> dict:
    """Train, evaluate, export, verify, quantise and write the three model folders of one modality."""
    log = print if progress else (lambda *a, **k: None)
    result = train(config, work_dir / config.modality, data_dir, progress)
    log(f"[{config.modality}] trained in {result.seconds:.0f}s")
    torch_scores = evaluate_cases(torch_predictor(result.model), result.test_cases, result.spec)
    log(format_scores(torch_scores))

    fp32 = export_onnx(result.model, config, result.spec, work_dir / config.modality / "fp32.onnx")
    parity = check_parity(result.model, fp32, network_inputs(result.test_cases, result.spec, 8))
    log(f"[{config.modality}] ONNX parity: max |Δp| = {parity.max_abs_diff:.2e}, "
        f"labels agree {parity.label_agreement:.4%}")
    files = {"fp32": fp32,
             "fp16": convert_fp16(fp32, work_dir / config.modality / "fp16.onnx"),
             "int8": quantize_int8(fp32, work_dir / config.modality / "int8.onnx",
                                   network_inputs(result.train_cases, result.spec, CALIBRATION_IMAGES))}
    labels = ["background"] + [o.name for o in organs_for(config.modality)]
    summary = {"training_seconds": round(result.seconds, 1), "torch": torch_scores, "variants": {}}
    for variant in VARIANTS:
        scores = evaluate_cases(onnx_predictor(ort_session(files[variant])), result.test_cases, result.spec)
        log(f"[{config.modality}/{variant}] mean Dice {scores['mean_dice']:.4f}")
        provenance = {
            "model": model_name(config.modality, variant), "variant": variant,
            "training_config": config.to_dict(),
            "data": {"source": str(data_dir) if data_dir else "training.data.phantoms.generate_case",
                     "seed": config.data_seed, "count": config.count, "test_percent": config.test_percent,
                     "train_images": len(result.train_cases), "test_images": len(result.test_cases)},
            "evaluation": scores, "torch_evaluation_mean_dice": torch_scores["mean_dice"],
            "onnx_parity": {"max_abs_diff": parity.max_abs_diff, "label_agreement": parity.label_agreement,
                            "tolerance": parity.tolerance},
            "training_seconds": round(result.seconds, 1),
            "calibration": f"{min(CALIBRATION_IMAGES, len(result.train_cases))} training images, minmax"
            if variant == "int8" else None,
            "versions": versions(), "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "python -m training.segmenter build-defaults",
        }
        write_model_dir(repository, model_name(config.modality, variant), files[variant], labels, provenance,
                        result.spec.to_json())
        summary["variants"][variant] = scores
    return summary
