"""Write and check one model folder in Triton's layout: config.pbtxt, labels.txt, 1/model.onnx, provenance.

The folder is the contract between training and serving (DESIGN.md): a real Triton server loads it
unchanged (platform ``onnxruntime_onnx``), and our in-process ONNX segmenter reads the very same files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx

from training.segmenter.errors import SegmenterError
from training.segmenter.export import load_onnx

VARIANTS = ("fp32", "fp16", "int8")
MAX_BATCH_SIZE = 8  # what one 2-core CPU instance turns around within ~100 ms
PREFERRED_BATCH_SIZES = (4, 8)  # int8 kernels amortise best at 8; 4 keeps latency low under light load
MAX_QUEUE_DELAY_US = 2000  # wait at most 2 ms to fill a batch: small next to a ~10 ms single inference

_ONNX_TO_TRITON = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32",
}


def model_name(modality: str, variant: str = "fp32") -> str:
    """``organ_seg_ct``, ``organ_seg_ct_fp16``, ``organ_seg_ct_int8`` and the same for cxr."""
    if variant not in VARIANTS:
        raise SegmenterError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    return f"organ_seg_{modality}" if variant == "fp32" else f"organ_seg_{modality}_{variant}"


def _tensor_signature(values) -> list[tuple[str, str, list[int]]]:
    """(name, Triton type, dims without the batch dimension) of ONNX graph inputs or outputs."""
    out = []
    for value in values:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        out.append((value.name, _ONNX_TO_TRITON[tensor.elem_type], dims[1:]))
    return out


def render_config(name: str, onnx_model: onnx.ModelProto, labels_file: str = "labels.txt") -> str:
    """The ``config.pbtxt`` text for an ONNX model whose first dimension is the (dynamic) batch."""
    def block(kind: str, signature, label_output: str | None = None) -> str:
        items = []
        for tensor_name, dtype, dims in signature:
            extra = f'\n    label_filename: "{labels_file}"' if tensor_name == label_output else ""
            items.append(f'  {{\n    name: "{tensor_name}"\n    data_type: {dtype}\n'
                         f'    dims: [ {", ".join(str(d) for d in dims)} ]{extra}\n  }}')
        return f"{kind} [\n" + ",\n".join(items) + "\n]\n"

    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {MAX_BATCH_SIZE}\n"
        + block("input", _tensor_signature(onnx_model.graph.input))
        + block("output", _tensor_signature(onnx_model.graph.output), label_output="probabilities")
        + "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(str(b) for b in PREFERRED_BATCH_SIZES)} ]\n"
        f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}\n"
        "}\n"
        "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n"
    )


def write_model_dir(repository: Path, name: str, onnx_path: Path, labels: list[str], provenance: dict,
                    preprocessing_json: str) -> Path:
    """Create ``repository/name`` with version 1 holding a copy of ``onnx_path``; returns the folder."""
    model = load_onnx(onnx_path)
    folder = Path(repository) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    if Path(onnx_path).resolve() != (folder / "1" / "model.onnx").resolve():
        shutil.copyfile(onnx_path, folder / "1" / "model.onnx")
    (folder / "config.pbtxt").write_text(render_config(name, model))
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "preprocessing.json").write_text(json.dumps(json.loads(preprocessing_json), indent=2) + "\n")
    (folder / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    verify_model_dir(folder)
    return folder


def parse_config(path: Path):
    """Parse a ``config.pbtxt`` with Triton's own ModelConfig schema (ships with tritonclient)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = Path(path)
    if not path.is_file():
        raise SegmenterError(f"{path} does not exist")
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise SegmenterError(f"{path} is not a valid Triton model config: {exc}") from exc


def verify_model_dir(folder: Path) -> None:
    """Check that config.pbtxt agrees with 1/model.onnx (names, types, dims) and labels.txt with outputs."""
    from tritonclient.grpc import model_config_pb2

    folder = Path(folder)
    config = parse_config(folder / "config.pbtxt")
    model = load_onnx(folder / "1" / "model.onnx")
    if config.name != folder.name:
        raise SegmenterError(f"{folder / 'config.pbtxt'}: name {config.name!r} differs from folder {folder.name!r}")
    if config.platform != "onnxruntime_onnx":
        raise SegmenterError(f"{folder / 'config.pbtxt'}: platform must be onnxruntime_onnx")
    for kind, declared, actual in (("input", config.input, model.graph.input),
                                   ("output", config.output, model.graph.output)):
        want = {(t.name, model_config_pb2.DataType.Name(t.data_type), tuple(t.dims)) for t in declared}
        have = {(n, dtype, tuple(dims)) for n, dtype, dims in _tensor_signature(actual)}
        if want != have:
            raise SegmenterError(f"{folder / 'config.pbtxt'} {kind}s {sorted(want)} do not match "
                                 f"{folder / '1' / 'model.onnx'} {sorted(have)}")
    labels = (folder / "labels.txt").read_text().split("\n")[:-1] if (folder / "labels.txt").is_file() else []
    classes = {t.name: t.dims[0] for t in config.output if t.name == "probabilities"}
    if classes and len(labels) != classes["probabilities"]:
        raise SegmenterError(f"{folder / 'labels.txt'} has {len(labels)} lines for {classes['probabilities']} classes")
