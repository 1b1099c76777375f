"""Preprocessing written down as data: intensity mapping, letterbox resize, and the inverse for masks.

The same :class:`PreprocessSpec` is stored in the ONNX ``metadata_props`` and in ``preprocessing.json`` next
to each model, so any consumer (our ONNX segmenter, the Triton client, another team) can reproduce the
network input without reading this code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from service.imaging.windowing import ABDOMEN_WINDOW
from training.segmenter.errors import SegmenterError



@dataclass(frozen=True)
class PreprocessSpec:
    """How raw pixels become the network input ``image`` [B,1,H,W] float32, and how masks come back."""

    modality: str
    input_units: str  # what the caller passes: "hounsfield (int16)" or "grey level (uint8)"
    intensity: dict[str, Any]  # {"type": "window", center_hu, width_hu} or {"type": "scale", divisor}
    normalise: dict[str, float]  # (x - mean) / std applied after the intensity mapping
    input_height: int
    input_width: int
    resize: str = "letterbox"  # keep aspect ratio, scale the longer side to fit, centre, pad the rest
    interpolation: str = "bilinear"  # for the image; label masks use nearest
    pad_value: float = 0.0  # value of padded pixels in the *normalised* input
    output_mapping: str = (
        "`probabilities` lie on a grid of input size / stem stride: crop the letterbox region (scaled to that "
        "grid), resize bilinearly to the original HxW, argmax; "
        "class i+1 = i-th organ in labels.txt after background"
    )

    def to_json(self) -> str:
        """Stable JSON text (sorted keys) for metadata_props and preprocessing.json."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PreprocessSpec":
        """Parse :meth:`to_json` output."""
        try:
            return cls(**json.loads(text))
        except (TypeError, json.JSONDecodeError) as exc:
            raise SegmenterError(f"invalid preprocessing spec: {exc}") from exc


def default_spec(modality: str, input_size: int = 256) -> PreprocessSpec:
    """The preprocessing each modality's default model is trained with."""
    if modality == "ct":
        intensity = {"type": "window", "center_hu": ABDOMEN_WINDOW.center, "width_hu": ABDOMEN_WINDOW.width,
                     "formula": "clip((HU - (center - width/2)) / width, 0, 1)"}
        units = "hounsfield (int16)"
    elif modality == "cxr":
        intensity = {"type": "scale", "divisor": 255.0, "formula": "grey / 255"}
        units = "grey level (uint8)"
    else:
        raise SegmenterError(f"unknown modality {modality!r}; expected ct or cxr")
    return PreprocessSpec(modality=modality, input_units=units, intensity=intensity,
                          normalise={"mean": 0.0, "std": 1.0}, input_height=input_size, input_width=input_size)


@dataclass(frozen=True)
class Letterbox:
    """Where the original image sits inside the network input (for undoing the resize)."""

    original_height: int
    original_width: int
    scaled_height: int
    scaled_width: int
    top: int
    left: int
    input_height: int
    input_width: int


def plan_letterbox(height: int, width: int, spec: PreprocessSpec) -> Letterbox:
    """Scale so the image fits ``input_height x input_width`` keeping its aspect ratio; centre it."""
    scale = min(spec.input_height / height, spec.input_width / width)
    sh, sw = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = (spec.input_height - sh) // 2, (spec.input_width - sw) // 2
    return Letterbox(height, width, sh, sw, top, left, spec.input_height, spec.input_width)


def map_intensity(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Raw pixels → float32 network intensities (window or scale, then normalise)."""
    x = image.astype(np.float32)
    kind = spec.intensity["type"]
    if kind == "window":
        low = spec.intensity["center_hu"] - spec.intensity["width_hu"] / 2.0
        x = np.clip((x - low) / spec.intensity["width_hu"], 0.0, 1.0)
    elif kind == "scale":
        x = x / float(spec.intensity["divisor"])
    else:
        raise SegmenterError(f"unknown intensity mapping {kind!r}")
    return (x - spec.normalise["mean"]) / spec.normalise["std"]


def preprocess_image(image: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, Letterbox]:
    """One raw 2-D image → ([1,H,W] float32 network input, letterbox geometry)."""
    if image.ndim != 2:
        raise SegmenterError(f"expected a 2-D greyscale image, got shape {image.shape}")
    box = plan_letterbox(*image.shape, spec)
    x = map_intensity(image, spec)
    if (box.scaled_height, box.scaled_width) != image.shape:
        x = np.asarray(Image.fromarray(x, mode="F").resize((box.scaled_width, box.scaled_height), Image.BILINEAR))
    out = np.full((1, spec.input_height, spec.input_width), spec.pad_value, dtype=np.float32)
    out[0, box.top:box.top + box.scaled_height, box.left:box.left + box.scaled_width] = x
    return out, box


def letterbox_labels(labels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A class-index mask → the network frame (nearest neighbour, padding is background)."""
    box = plan_letterbox(*labels.shape, spec)
    m = labels.astype(np.uint8)
    if (box.scaled_height, box.scaled_width) != labels.shape:
        m = np.asarray(Image.fromarray(m).resize((box.scaled_width, box.scaled_height), Image.NEAREST))
    out = np.zeros((spec.input_height, spec.input_width), dtype=np.uint8)
    out[box.top:box.top + box.scaled_height, box.left:box.left + box.scaled_width] = m
    return out


def bilinear_taps(in_size: int, out_size: int, start: float, stop: float) -> tuple[np.ndarray, np.ndarray]:
    """A bilinear resize of the source interval [start, stop) to ``out_size`` samples along one axis, as
    (indices, weights), both (out_size, taps): output ``i`` is ``sum_t weights[i, t] * signal[indices[i, t]]``.

    PIL's conventions (pixel centres, a triangle filter widened when shrinking, weights renormalised where the
    filter leaves the image), so the result equals PIL's ``resize(..., BILINEAR, box=...)``. Rows with fewer
    taps than the widest repeat their first tap with weight 0."""
    scale = (stop - start) / out_size
    support = max(scale, 1.0)  # the triangle's half-width in source pixels
    centres = start + (np.arange(out_size) + 0.5) * scale
    first = np.clip(np.floor(centres - support + 0.5), 0, in_size - 1).astype(int)
    last = np.clip(np.floor(centres + support + 0.5), first + 1, in_size).astype(int)
    indices = first[:, None] + np.arange(int((last - first).max()))[None, :]
    unused = indices >= last[:, None]
    weights = np.clip(1.0 - np.abs((indices + 0.5 - centres[:, None]) / support), 0.0, None)
    weights[unused] = 0.0
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    indices[unused] = np.broadcast_to(first[:, None], indices.shape)[unused]
    return indices, weights.astype(np.float32)


def restore_labels(probabilities: np.ndarray, box: Letterbox) -> np.ndarray:
    """Network ``probabilities`` [K,H,W] → class-index mask [orig H, orig W] (uint8).

    Resizing probabilities and then taking the argmax keeps boundaries smooth and never invents a class
    that no pixel predicted, unlike interpolating label numbers.
    """
    fy = probabilities.shape[1] / box.input_height
    fx = probabilities.shape[2] / box.input_width
    if (fy, fx) == (1.0, 1.0) and (box.scaled_height, box.scaled_width) == (box.original_height,
                                                                              box.original_width):
        crop = probabilities[:, box.top:box.top + box.scaled_height, box.left:box.left + box.scaled_width]
        return crop.argmax(axis=0).astype(np.uint8)
    # A bilinear resize (PIL's, see bilinear_taps) of the letterbox region straight to the original size. A
    # pixel is a convex combination of its taps' probability vectors, so where every tap has the same argmax
    # the pixel has it too: only pixels near a class boundary (a few percent) need the K interpolated
    # probabilities. Same labels as resizing every channel, several times less work per request.
    row_idx, row_w = bilinear_taps(probabilities.shape[1], box.original_height, box.top * fy,
                                   (box.top + box.scaled_height) * fy)
    col_idx, col_w = bilinear_taps(probabilities.shape[2], box.original_width, box.left * fx,
                                   (box.left + box.scaled_width) * fx)
    coarse = probabilities.argmax(axis=0).astype(np.uint8)
    taps_r, taps_c = row_idx.shape[1], col_idx.shape[1]
    # Every output pixel's taps lie in the taps_r x taps_c window of the coarse grid starting at its first tap:
    # mark the windows (edge-clamped, a superset near the border) that hold more than one class.
    padded = np.pad(coarse, ((0, taps_r - 1), (0, taps_c - 1)), mode="edge")
    window_mixed = np.zeros(coarse.shape, bool)
    for r in range(taps_r):
        for c in range(taps_c):
            window_mixed |= padded[r:r + coarse.shape[0], c:c + coarse.shape[1]] != coarse
    first = np.ix_(row_idx[:, 0], col_idx[:, 0])
    labels, boundary = coarse[first], window_mixed[first]
    ys, xs = np.nonzero(boundary)
    if ys.size:
        mixed = np.zeros((probabilities.shape[0], ys.size), np.float32)
        for r in range(row_idx.shape[1]):
            for c in range(col_idx.shape[1]):
                mixed += probabilities[:, row_idx[ys, r], col_idx[xs, c]] * (row_w[ys, r] * col_w[xs, c])
        labels[ys, xs] = mixed.argmax(axis=0)
    return labels
