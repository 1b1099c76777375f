"""Held-out evaluation: Dice and HD95 (mm) per organ and their means, for a torch or ONNX model."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from training.data.anatomy import organs_for
from training.segmenter.dataset import SegmentationCase
from training.segmenter.metrics import organ_scores, summarise
from training.segmenter.preprocessing import PreprocessSpec, preprocess_image, restore_labels

# A batch of network inputs [B,1,H,W] float32 → probabilities [B,K,H/s,W/s] float32 (s = stem stride).
BatchPredictor = Callable[[np.ndarray], np.ndarray]


def torch_predictor(model: torch.nn.Module) -> BatchPredictor:
    """Wrap a UNet (logits) as a :data:`BatchPredictor`."""
    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(model(torch.from_numpy(batch)), dim=1).numpy()
    return predict


def onnx_predictor(session) -> BatchPredictor:
    """Wrap an ONNX Runtime session with an ``image`` input and ``probabilities`` output."""
    def predict(batch: np.ndarray) -> np.ndarray:
        return session.run(["probabilities"], {"image": batch})[0].astype(np.float32)
    return predict


def predict_cases(predict: BatchPredictor, cases: list[SegmentationCase], spec: PreprocessSpec,
                  batch_size: int = 8, progress: bool = False, desc: str = "predict") -> list[np.ndarray]:
    """Class-index masks at each case's original size."""
    masks: list[np.ndarray] = []
    for start in tqdm(range(0, len(cases), batch_size), desc=desc, disable=not progress, unit="batch"):
        chunk = cases[start:start + batch_size]
        prepared = [preprocess_image(c.image, spec) for c in chunk]
        probabilities = predict(np.stack([p[0] for p in prepared]))
        masks.extend(restore_labels(prob, box) for prob, (_, box) in zip(probabilities, prepared))
    return masks


def evaluate_cases(predict: BatchPredictor, cases: list[SegmentationCase], spec: PreprocessSpec,
                   progress: bool = False, desc: str = "evaluate") -> dict:
    """Dice and HD95 per organ (mean over images) and the mean over organs."""
    organs = [o.name for o in organs_for(spec.modality)]
    masks = predict_cases(predict, cases, spec, progress=progress, desc=desc)
    dices, hds = [], []
    for mask, case in zip(masks, cases):
        d, h = organ_scores(mask, case.classes, len(organs) + 1, case.pixel_spacing_mm)
        dices.append(d)
        hds.append(h)
    return summarise(dices, hds, organs)


def format_scores(scores: dict) -> str:
    """A short human-readable table of an :func:`evaluate_cases` result."""
    lines = [f"{'organ':<14} {'Dice':>6} {'HD95 mm':>8}"]
    for name, s in scores["per_organ"].items():
        lines.append(f"{name:<14} {s['dice']:6.3f} {s['hd95_mm']:8.2f}")
    lines.append(f"{'mean':<14} {scores['mean_dice']:6.3f} {scores['mean_hd95_mm']:8.2f}   ({scores['images']} images)")
    return "\n".join(lines)
