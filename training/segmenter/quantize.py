"""Precision variants of an exported fp32 model: fp16 (I/O kept float32) and int8 static QDQ.

int8 uses ONNX Runtime's static quantisation with calibration images from the phantoms: weights int8
per output channel (symmetric), activations uint8 (asymmetric, ReLU outputs are non-negative), QDQ format so
ORT's CPU provider fuses each DequantizeLinear→Conv→QuantizeLinear triple into one integer convolution.
The head (the logit Conv, Softmax, ArgMax) stays float: argmax over coarsely quantised logits would flip
labels at organ boundaries. Weights use 7 bits (``reduce_range``): on CPUs without VNNI (AVX2, like this
machine) ORT's u8s8 kernels add pairs of products in saturating int16, and full-range weights overflowed it —
mean Dice fell from 0.927 to 0.769 on CT and to 0.41 on CXR; with 7-bit weights it stays within 0.001.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx

from training.segmenter.errors import SegmenterError
from training.segmenter.export import INPUT_NAME, load_onnx, set_metadata

INT8_OP_TYPES = ["Conv", "Add", "Relu", "Resize"]  # the whole UNet trunk; nothing after the head conv
FP16_KEEP_FLOAT32 = ["Softmax", "ArgMax", "Resize"]  # no fp16 CPU kernels; casting them would only add work


def convert_fp16(fp32_path: Path, out_path: Path) -> Path:
    """Convert weights and activations to float16, keeping the ``image``/outputs float32 for clients."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = load_onnx(fp32_path)
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_KEEP_FLOAT32)
    sort_topologically(converted.graph)  # the converter appends its input casts at the end of the node list
    set_metadata(converted, {"medclm.variant": "fp16"})
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(converted, str(out_path))
    return out_path


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node follows the producers of its inputs (ONNX checker requirement)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise SegmenterError(f"graph {graph.name!r} has a cycle or a dangling input")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)


class ImageCalibrationReader:
    """Feeds preprocessed images to ONNX Runtime's calibrator one batch at a time."""

    def __init__(self, images: np.ndarray, batch_size: int = 4):
        self._batches = iter([images[i:i + batch_size] for i in range(0, len(images), batch_size)])

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:  # part of CalibrationDataReader's interface; one pass is all we use
        pass


def quantize_int8(fp32_path: Path, out_path: Path, calibration_images: Iterable[np.ndarray] | np.ndarray,
                  method: str = "minmax") -> Path:
    """Static int8 QDQ quantisation calibrated on ``calibration_images`` ([N,1,H,W] float32 inputs)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = np.asarray(list(calibration_images) if not isinstance(calibration_images, np.ndarray)
                        else calibration_images, dtype=np.float32)
    if images.size == 0 or images.ndim != 4:
        raise SegmenterError(f"empty calibration set for {fp32_path}: need [N,1,H,W] images with N ≥ 1")
    model = load_onnx(fp32_path)
    metadata = {p.key: p.value for p in model.metadata_props}
    reader_cls = type("Reader", (ImageCalibrationReader, CalibrationDataReader), {})
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference + graph optimisation first (folds constants, fuses BN) so calibration sees the
        # graph that will actually run.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out_path), reader_cls(images),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=INT8_OP_TYPES,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                              "entropy": CalibrationMethod.Entropy}[method],
            nodes_to_exclude=_head_nodes(prepared),
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
    quantized = onnx.load(str(out_path))
    set_metadata(quantized, {**metadata, "medclm.variant": "int8",
                             "medclm.calibration": f"{len(images)} phantom training images, {method}"})
    onnx.save(quantized, str(out_path))
    return out_path


def _head_nodes(path: Path) -> list[str]:
    """The last Conv (logits) stays float: its output feeds argmax directly."""
    model = onnx.load(str(path))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    return convs[-1:]
