"""ONNX export with the preprocessing in metadata, and the parity check against the torch model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from training.data.anatomy import organs_for
from training.segmenter.config import SegmenterConfig
from training.segmenter.errors import SegmenterError
from training.segmenter.preprocessing import PreprocessSpec
from training.segmenter.unet import OrganUNet, SegmentationHead

OPSET = 18  # ≥17 as required; 18 is what torch's exporter targets natively, no version conversion step
INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities", "labels")
PARITY_TOLERANCE = 1e-4  # max |Δ probability| torch vs ONNX Runtime; fp32 kernels differ only in summation order


def metadata_for(spec: PreprocessSpec, config: SegmenterConfig, variant: str) -> dict[str, str]:
    """The ``metadata_props`` every exported model carries (strings; JSON where structured)."""
    return {
        "medclm.modality": config.modality,
        "medclm.variant": variant,
        "medclm.preprocessing": spec.to_json(),
        "medclm.labels": json.dumps(["background"] + [o.name for o in organs_for(config.modality)]),
        "medclm.global_labels": json.dumps([0] + [o.label for o in organs_for(config.modality)]),
        "medclm.training_config": json.dumps(config.to_dict(), sort_keys=True),
    }


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace our ``medclm.*`` metadata entries, keeping any others."""
    kept = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)


def read_metadata(path: Path) -> dict[str, str]:
    """Metadata of an ONNX file; a missing or corrupt file is a :class:`SegmenterError` naming it."""
    return {p.key: p.value for p in load_onnx(path, load_weights=False).metadata_props}


def load_onnx(path: Path, load_weights: bool = True) -> onnx.ModelProto:
    """Load and structurally check an ONNX file with a readable error."""
    path = Path(path)
    if not path.is_file():
        raise SegmenterError(f"ONNX model {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=load_weights)
        if load_weights:
            onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, checker errors, …: all mean "not a usable model"
        raise SegmenterError(f"ONNX model {path} is corrupt or invalid: {exc}") from exc
    if not model.graph.node:
        raise SegmenterError(f"ONNX model {path} is corrupt or empty (no graph nodes)")
    return model


def export_onnx(model: OrganUNet, config: SegmenterConfig, spec: PreprocessSpec, path: Path) -> Path:
    """Export to ONNX: ``image`` [B,1,H,W] → ``probabilities`` [B,K,H/s,W/s] float32 and ``labels`` [B,H/s,W/s].

    s is the stem's stride; ``labels`` is uint8.
    The batch dimension is dynamic (Triton's dynamic batcher stacks requests); H and W are fixed by the
    preprocessing spec, which makes shapes static for ONNX Runtime's optimisers.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = SegmentationHead(model).eval()
    example = torch.zeros(2, 1, spec.input_height, spec.input_width)
    torch.onnx.export(
        head, (example,), str(path), opset_version=OPSET, input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES), dynamic_axes={INPUT_NAME: {0: "batch"}, "probabilities": {0: "batch"},
                                                       "labels": {0: "batch"}},
        dynamo=False,  # the TorchScript exporter gives a plain, stable graph (Conv/BN folded) for QDQ
    )
    onnx_model = onnx.load(str(path))
    onnx_model.producer_name = "medclm.training.segmenter"
    set_metadata(onnx_model, metadata_for(spec, config, "fp32"))
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, str(path))
    return path


def ort_session(path: Path, threads: int = 2, optimisation: str = "all", providers: list[str] | None = None):
    """An ONNX Runtime session (CPU unless ``providers`` says otherwise, e.g. CUDA first with CPU as the
    fallback); a corrupt file raises :class:`SegmenterError` naming it."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise SegmenterError(f"ONNX model {path} does not exist")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimisation]
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:
        raise SegmenterError(f"ONNX model {path} cannot be loaded by ONNX Runtime: {exc}") from exc


@dataclass(frozen=True)
class ParityReport:
    """Torch vs ONNX Runtime on the same inputs."""

    max_abs_diff: float
    label_agreement: float  # share of pixels with the same argmax
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def check_parity(model: OrganUNet, onnx_path: Path, inputs: np.ndarray,
                 tolerance: float = PARITY_TOLERANCE) -> ParityReport:
    """Compare probabilities and labels; raises :class:`SegmenterError` when over ``tolerance``."""
    session = ort_session(onnx_path)
    with torch.inference_mode():
        expected_prob, expected_labels = SegmentationHead(model).eval()(torch.from_numpy(inputs))
    prob, labels = session.run(list(OUTPUT_NAMES), {INPUT_NAME: inputs})
    report = ParityReport(float(np.abs(prob - expected_prob.numpy()).max()),
                          float((labels == expected_labels.numpy()).mean()), tolerance)
    if not report.ok:
        raise SegmenterError(f"ONNX model {onnx_path} differs from torch by {report.max_abs_diff:.2e} "
                             f"(tolerance {tolerance:.0e})")
    return report
