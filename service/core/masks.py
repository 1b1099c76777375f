"""Organ masks as the wire carries them: PNG (0/255, one per organ) or run lengths; areas and boxes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from training.data.anatomy import ORGAN_BY_LABEL

from service.core.types import OrganMask


def encode_png(mask: np.ndarray) -> bytes:
    """8-bit grayscale PNG, 255 inside the organ, 0 outside."""
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def encode_rle(mask: np.ndarray) -> list[int]:
    """Row-major run lengths alternating outside/inside, starting with an outside run (possibly 0)."""
    flat = mask.astype(bool).ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def decode_rle(runs: list[int], height: int, width: int) -> np.ndarray:
    """Inverse of :func:`encode_rle` (for clients and tests)."""
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape(height, width)


def organ_masks(labels: np.ndarray, spacing_mm: tuple[float, float] | None, mask_format: str) -> list[OrganMask]:
    """One :class:`OrganMask` per organ present in the (H, W) global label map, in label order."""
    result = []
    for label in np.unique(labels):
        if label == 0 or int(label) not in ORGAN_BY_LABEL:
            continue
        mask = labels == label
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        count = int(mask.sum())
        area = round(count * spacing_mm[0] * spacing_mm[1], 2) if spacing_mm else None
        result.append(OrganMask(
            label=int(label), name=ORGAN_BY_LABEL[int(label)].name, pixel_count=count, area_mm2=area,
            box_px=(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1),
            mask_png=encode_png(mask) if mask_format == "png" else b"",
            mask_rle=encode_rle(mask) if mask_format == "rle" else []))
    return result
