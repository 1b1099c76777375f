"""Preprocessing written down as data: intensity mapping, letterbox resize, and the inverse for masks.

The same :class:`PreprocessSpec` is stored in the ONNX ``metadata_props`` and in ``preprocessing.json`` next
to each model, so any consumer (our ONNX segmenter, the Triton client, another team) can reproduce the
network input without reading this code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
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
    # One resampling from the (possibly coarser) output grid straight to the original size; PIL's ``box``
    # takes the fractional crop region in source coordinates.
    region = (box.left * fx, box.top * fy, (box.left + box.scaled_width) * fx, (box.top + box.scaled_height) * fy)
    size = (box.original_width, box.original_height)
    resized = np.stack([np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize(size, Image.BILINEAR,
                                                                                          box=region))
                        for c in probabilities])
    return resized.argmax(axis=0).astype(np.uint8)
