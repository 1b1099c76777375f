"""What ``model_repository/`` offers: VQA models (Triton vLLM-backend layout) and organ segmenters (ONNX).

The repository is the one contract between training and serving; this module only reads it. Variant
names follow the training code: ``medclm`` / ``medclm_bf16`` / ``medclm_int8`` and
``organ_seg_<modality>`` / ``..._fp16`` / ``..._int8``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from training.data.anatomy import MODALITIES
from training.medclm.config import box_grid
from training.medclm.export import model_name as vqa_model_name
from training.segmenter.repository import model_name as segmenter_model_name

from service.errors import ErrorCode, ServiceError


@dataclass(frozen=True)
class RepositoryModel:
    """One model folder of the repository."""

    name: str
    kind: str  # vqa | segmentation
    precision: str
    modalities: tuple[str, ...]
    fingerprint: str  # first 16 hex digits of the weights' sha256
    # Trained with ``box_tokens: pixels``: boxes on a grid of this many lines per side (the input width), so a
    # box in a question is snapped to it as in training. None: any 0-999 value (``box_tokens: digits``).
    box_grid: int | None = None


def _sha256_prefix(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def vqa_model(repository: Path, base: str, precision: str) -> RepositoryModel:
    """The VQA model ``base`` in ``precision``; NOT_FOUND when the folder or its provenance is missing."""
    name = vqa_model_name(base, precision)
    meta_path = Path(repository) / name / "1" / "checkpoint" / "medclm.json"
    if not meta_path.is_file():
        raise ServiceError(ErrorCode.NOT_FOUND, f"model {name!r} is not in the model repository {repository}")
    meta = json.loads(meta_path.read_text())
    sha = (meta.get("export") or {}).get("weights_sha256") or ""
    modalities = tuple(meta.get("modalities") or MODALITIES)
    return RepositoryModel(name, "vqa", precision, modalities, sha[:16], box_grid(meta.get("config") or {}))


def segmenter_model(repository: Path, modality: str, precision: str) -> RepositoryModel:
    """The organ segmenter of ``modality`` in ``precision``; NOT_FOUND when its ONNX file is missing."""
    name = segmenter_model_name(modality, precision)
    onnx_path = Path(repository) / name / "1" / "model.onnx"
    if not onnx_path.is_file():
        raise ServiceError(ErrorCode.NOT_FOUND, f"model {name!r} is not in the model repository {repository}")
    return RepositoryModel(name, "segmentation", precision, (modality,), _sha256_prefix(onnx_path))


def served_models(repository: Path, vqa_base: str, vqa_precisions: list[str],
                  segmenter_precisions: list[str]) -> list[RepositoryModel]:
    """Every model the settings ask to serve, checked to exist (a missing one raises NOT_FOUND)."""
    models = [vqa_model(repository, vqa_base, p) for p in vqa_precisions]
    for precision in segmenter_precisions:
        models += [segmenter_model(repository, m, precision) for m in MODALITIES]
    return models
