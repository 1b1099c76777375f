"""Checkpoints carry their own config and preprocessing, so a checkpoint file alone rebuilds the model."""

from __future__ import annotations

from pathlib import Path

import torch

from training.data.anatomy import organs_for
from training.segmenter.config import SegmenterConfig
from training.segmenter.errors import SegmenterError
from training.segmenter.preprocessing import PreprocessSpec
from training.segmenter.unet import OrganUNet


def save_checkpoint(path: Path, model: OrganUNet, config: SegmenterConfig, spec: PreprocessSpec) -> Path:
    """Write weights, config, preprocessing and organ names to ``path``."""
    path = Path(path)
    torch.save({
        "format": "medclm-organ-unet/1",
        "config": config.to_dict(),
        "preprocessing": spec.to_json(),
        "organs": [o.name for o in organs_for(config.modality)],
        "state_dict": model.state_dict(),
    }, path)
    return path


def load_checkpoint(path: Path, modality: str | None = None) -> tuple[OrganUNet, SegmenterConfig, PreprocessSpec]:
    """Rebuild (model in eval mode, config, preprocessing); ``modality`` if given must match the checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise SegmenterError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file; all mean "not a checkpoint"
        raise SegmenterError(f"checkpoint {path} cannot be read: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != "medclm-organ-unet/1":
        raise SegmenterError(f"checkpoint {path} is not a MedCLM organ UNet checkpoint")
    config = SegmenterConfig.from_dict(payload["config"])
    if modality is not None and modality != config.modality:
        raise SegmenterError(f"checkpoint {path} is for modality {config.modality!r}, not {modality!r}")
    model = OrganUNet(len(organs_for(config.modality)) + 1, config.widths, config.stem_stride)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, config, PreprocessSpec.from_json(payload["preprocessing"])
