"""Export a checkpoint into the model repository in Triton's vLLM-backend layout.

``<repository>/<name>/``:
- ``config.pbtxt``: ``backend: "vllm"``, one ``KIND_MODEL`` instance (the engine places itself), decoupled
  transactions (the backend streams; it asserts this policy);
- ``1/model.json``: vLLM engine arguments, handed by Triton's backend to ``AsyncEngineArgs(**model_json)``;
- ``1/checkpoint/``: the Hugging Face checkpoint (no trainer state) with ``medclm.json`` provenance.

Precision variants are separate models, as for the segmenter: ``medclm`` (fp32 compute), ``medclm_bf16``,
``medclm_int8`` (compressed-tensors W8A8). The service selects a variant by model name
(:func:`model_name`). fp32 and int8 store their float tensors as float16: it halves the files, and
vLLM/transformers upcast to the fp32 compute dtype on load, so parity is checked on the stored weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch

from training.medclm.checkpoint import META_FILE, STATE_FILE, read_meta, rename_vision_weights_for_vllm
from training.medclm.engines import vllm_engine_args
from training.medclm.errors import MedCLMError

# precision → (compute dtype in model.json, storage dtype of float tensors, vLLM quantization method)
PRECISIONS = {
    "fp32": ("float32", torch.float16, None),
    "bf16": ("bfloat16", torch.bfloat16, None),
    "int8": ("float32", torch.float16, "compressed-tensors"),
}
FP16_SAFE_MAX = 6.0e4  # float16's largest finite value is 65504; tensors beyond stay float32
CHECKPOINT_DIR = "checkpoint"
HF_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json", "processor_config.json", META_FILE)


def model_name(base: str, precision: str) -> str:
    """``medclm`` for fp32, ``medclm_bf16`` / ``medclm_int8`` for the low-precision variants."""
    if precision not in PRECISIONS:
        raise MedCLMError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    return base if precision == "fp32" else f"{base}_{precision}"


def render_config_pbtxt(name: str) -> str:
    """Triton model config for the vLLM backend (inputs/outputs are auto-completed by the backend)."""
    return (f'name: "{name}"\n'
            'backend: "vllm"\n'
            "max_batch_size: 0\n"  # vLLM batches in-flight itself
            "model_transaction_policy {\n  decoupled: true\n}\n"
            "instance_group [\n  {\n    count: 1\n    kind: KIND_MODEL\n  }\n]\n")


def cast_for_storage(path: Path, storage: torch.dtype) -> None:
    """Rewrite every ``*.safetensors`` in ``path`` with float tensors in ``storage`` dtype.

    Quantization scales stay float32 (vLLM's int8 kernels expect them so); a tensor that float16 cannot hold
    stays float32 rather than overflow to inf.
    """
    from safetensors.torch import load_file, save_file

    for file in sorted(Path(path).glob("*.safetensors")):
        tensors = load_file(str(file))
        for name, tensor in tensors.items():
            if not tensor.is_floating_point() or name.endswith("_scale"):
                continue
            if storage == torch.float16 and tensor.abs().max().item() > FP16_SAFE_MAX:
                continue
            tensors[name] = tensor.to(storage)
        save_file(tensors, str(file), metadata={"format": "pt"})


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_path(target: Path, root: Path) -> str:
    """``target`` relative to the server's start folder when inside it (portable), else absolute."""
    target, root = target.resolve(), Path(root).resolve()
    return os.path.relpath(target, root) if target.is_relative_to(root) else str(target)


def export_model(checkpoint: Path, repository: Path, name: str = "medclm", precision: str = "fp32",
                 evaluation: Path | None = None, root: Path = Path(".")) -> Path:
    """Write ``repository/model_name(name, precision)`` from a MedCLM checkpoint; returns the model folder."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise MedCLMError(f"checkpoint {checkpoint} does not exist")
    meta = read_meta(checkpoint)
    missing = [f for f in HF_FILES if not (checkpoint / f).is_file()]
    if missing:
        raise MedCLMError(f"checkpoint {checkpoint} lacks {', '.join(missing)}")
    if "quantization_config" in json.loads((checkpoint / "config.json").read_text()):
        raise MedCLMError(f"{checkpoint} is already quantized; export the float checkpoint (export quantizes)")
    folder = Path(repository) / model_name(name, precision)  # checks the precision
    dtype, storage, quantization = PRECISIONS[precision]
    target = folder / "1" / CHECKPOINT_DIR
    if target.exists():
        shutil.rmtree(target)
    if precision == "int8":
        from training.medclm.quantize import quantize_w8a8

        quantize_w8a8(checkpoint, target)
        meta = read_meta(target)
    else:
        shutil.copytree(checkpoint, target, ignore=shutil.ignore_patterns(STATE_FILE))
    rename_vision_weights_for_vllm(target)  # checkpoints from before the rename was part of saving
    cast_for_storage(target, storage)
    config = json.loads((target / "config.json").read_text())
    config["dtype"] = dtype  # what transformers' dtype="auto" picks: the compute dtype, not the storage one
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    engine = vllm_engine_args(_model_path(target, root), dtype, config["text_config"]["max_position_embeddings"],
                              quantization)
    (folder / "1" / "model.json").write_text(json.dumps(engine, indent=2) + "\n")
    (folder / "config.pbtxt").write_text(render_config_pbtxt(folder.name))
    figures = json.loads(Path(evaluation).read_text()) if evaluation else None
    if figures is not None:
        figures = {k: v for k, v in figures.items() if k != "examples"}
    meta["export"] = {"model": folder.name, "precision": precision, "dtype": dtype,
                      "storage_dtype": str(storage).removeprefix("torch."), "quantization": quantization,
                      "source_checkpoint": str(checkpoint.resolve()),
                      "weights_sha256": _sha256(target / "model.safetensors")}
    meta["evaluation"] = figures
    (target / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    verify_model_dir(folder, root)
    return folder


def read_engine_args(folder: Path, root: Path | None = None) -> dict:
    """``1/model.json`` of a model folder with ``model`` resolved to an existing absolute path.

    A relative ``model`` is resolved against ``root`` (where the server started; default the current
    folder) as Triton's backend does, falling back to the folder's own ``1/checkpoint`` so a repository
    copied elsewhere still loads in-process.
    """
    folder = Path(folder)
    path = folder / "1" / "model.json"
    if not path.is_file():
        raise MedCLMError(f"{folder} has no 1/model.json (not a vLLM-backend model folder)")
    try:
        args = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MedCLMError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(args, dict) or not isinstance(args.get("model"), str):
        raise MedCLMError(f"{path} must be an object with a string 'model'")
    model = Path(args["model"])
    if not model.is_absolute():
        model = Path(root or ".") / model
    if not model.is_dir():
        model = folder / "1" / CHECKPOINT_DIR
    if not model.is_dir():
        raise MedCLMError(f"{path}: model folder {args['model']!r} does not exist")
    return {**args, "model": str(model.resolve())}


def verify_model_dir(folder: Path, root: Path | None = None) -> dict:
    """Check a vLLM-backend model folder is complete; returns its provenance (``medclm.json``)."""
    folder = Path(folder)
    config = folder / "config.pbtxt"
    if not config.is_file():
        raise MedCLMError(f"{folder} has no config.pbtxt")
    text = config.read_text()
    if not re.search(r'^backend:\s*"vllm"\s*$', text, re.M):
        raise MedCLMError(f"{config}: backend must be \"vllm\"")
    if not re.search(rf'^name:\s*"{re.escape(folder.name)}"\s*$', text, re.M):
        raise MedCLMError(f"{config}: name differs from the folder name {folder.name!r}")
    checkpoint = Path(read_engine_args(folder, root)["model"])
    missing = [f for f in HF_FILES if not (checkpoint / f).is_file()]
    if missing:
        raise MedCLMError(f"{checkpoint} lacks {', '.join(missing)}")
    if (checkpoint / STATE_FILE).exists():
        raise MedCLMError(f"{checkpoint} holds {STATE_FILE}; exports must not carry trainer state")
    meta = read_meta(checkpoint)
    if "export" not in meta:
        raise MedCLMError(f"{checkpoint / META_FILE} has no export record")
    return meta
