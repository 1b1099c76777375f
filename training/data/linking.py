"""Lesion → host organ linking, and the position words the rationale uses.

The host organ is the organ holding the largest fraction of the lesion's pixels (its mask when known,
else its box). The reference code instead takes the organ whose *bounding box* has the highest IoU with the
lesion box, which sends a small lesion inside a large organ to whichever small organ's box it grazes; the
fraction-inside rule does not depend on organ size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data.boxes import BoxPx

DEFAULT_MIN_OVERLAP = 0.3


@dataclass(frozen=True)
class OrganLink:
    """Where a lesion lies: its host organ (None = outside the segmented organs) and the overlap."""

    organ: str | None
    overlap: float  # fraction of the lesion's pixels inside ``organ`` (best organ even when below minimum)
    fractions: dict[str, float]  # every overlapping organ → fraction


def lesion_region(box_px: BoxPx, shape: tuple[int, int], mask: np.ndarray | None = None) -> np.ndarray:
    """Boolean pixel region of a lesion: its mask if given, else the pixels its box covers."""
    if mask is not None:
        if mask.shape != shape:
            raise ValueError(f"lesion mask shape {mask.shape} differs from image shape {shape}")
        return mask.astype(bool)
    region = np.zeros(shape, dtype=bool)
    x1, y1, x2, y2 = box_px
    # A pixel belongs to the box if its centre lies inside; a sub-pixel box still covers its nearest pixel.
    c1, c2 = int(np.floor(x1 + 0.5)), max(int(np.floor(x2 + 0.5)), int(np.floor(x1 + 0.5)) + 1)
    r1, r2 = int(np.floor(y1 + 0.5)), max(int(np.floor(y2 + 0.5)), int(np.floor(y1 + 0.5)) + 1)
    region[max(r1, 0):min(r2, shape[0]), max(c1, 0):min(c2, shape[1])] = True
    return region


def link_lesion_to_organ(
    box_px: BoxPx,
    organ_mask: np.ndarray,
    organ_names: dict[int, str],
    *,
    lesion_mask: np.ndarray | None = None,
    min_overlap: float = DEFAULT_MIN_OVERLAP,
) -> OrganLink:
    """Link one lesion to the organ holding the largest fraction of its pixels.

    ``organ_mask`` holds one integer label per pixel (0 = background); ``organ_names`` maps labels to names.
    Labels missing from ``organ_names`` raise ValueError, since silently dropping them would mislabel lesions.
    Below ``min_overlap`` the lesion is outside the segmented organs (``organ`` is None).
    """
    region = lesion_region(box_px, organ_mask.shape, lesion_mask)
    total = int(region.sum())
    if total == 0:
        return OrganLink(None, 0.0, {})
    labels, counts = np.unique(organ_mask[region], return_counts=True)
    fractions: dict[str, float] = {}
    for label, count in zip(labels.tolist(), counts.tolist()):
        if label == 0:
            continue
        if label not in organ_names:
            raise ValueError(f"organ mask has label {label}, which organs.json does not name")
        fractions[organ_names[label]] = count / total
    if not fractions:
        return OrganLink(None, 0.0, {})
    best = max(fractions, key=fractions.__getitem__)
    overlap = fractions[best]
    return OrganLink(best if overlap >= min_overlap else None, overlap, fractions)


@dataclass(frozen=True)
class Position:
    """Words for where a lesion sits, derived from geometry (patient side, level, depth in its organ)."""

    side: str  # "right" | "left" | "midline" (patient side; radiological convention: image left = right)
    level: str  # CT axial: "anterior" | "posterior"; radiographs: "upper" | "lower"
    depth: str  # "central" | "peripheral" within the host organ (or the image when outside organs)


def describe_position(
    box_px: BoxPx,
    modality: str,
    width: int,
    height: int,
    host_region: np.ndarray | None = None,
    midline_x: float | None = None,
) -> Position:
    """Derive position words from the lesion box centre.

    Side is relative to the body midline (``midline_x``, default the image centre) with a central band of
    5% of the width called "midline". Level and depth are relative to the host organ's pixels when given,
    otherwise to the whole image.
    """
    cx, cy = (box_px[0] + box_px[2]) / 2.0, (box_px[1] + box_px[3]) / 2.0
    mid = width / 2.0 if midline_x is None else midline_x
    if abs(cx - mid) < 0.05 * width / 2.0:
        side = "midline"
    else:
        side = "right" if cx < mid else "left"

    if host_region is not None and host_region.any():
        rows, cols = np.nonzero(host_region)
        ocx, ocy = cols.mean(), rows.mean()
        radius = np.sqrt(rows.size / np.pi)
    else:
        ocx, ocy = width / 2.0, height / 2.0
        radius = min(width, height) / 2.0
    upper = cy < ocy
    if modality == "ct":
        level = "anterior" if upper else "posterior"  # image top is anterior on an axial slice
    else:
        level = "upper" if upper else "lower"
    distance = float(np.hypot(cx - ocx, cy - ocy))
    depth = "central" if distance < 0.5 * radius else "peripheral"
    return Position(side, level, depth)


def body_midline_x(image: np.ndarray, modality: str) -> float:
    """Column of the body's midline: centroid of body pixels on CT (HU > -500), image centre otherwise."""
    if modality == "ct":
        cols = np.nonzero(image > -500)[1]
        if cols.size:
            return float(cols.mean())
    return image.shape[1] / 2.0
