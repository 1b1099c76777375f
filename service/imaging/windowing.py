"""Hounsfield windowing: the one place where CT intensities become display/model intensities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """A VOI window in Hounsfield units (centre/level and width)."""

    center: float
    width: float


# Soft-tissue abdomen window: the standard reading window for liver, spleen and kidney lesions.
ABDOMEN_WINDOW = Window(center=40.0, width=400.0)

# Offset used when CT slices are stored as 16-bit PNG: stored value = HU + 1024 (air -1000 → 24).
PNG_HU_OFFSET = 1024


def window_hounsfield(hu: np.ndarray, window: Window = ABDOMEN_WINDOW) -> np.ndarray:
    """Map Hounsfield units to uint8 [0, 255] through a linear VOI window (clipped outside it)."""
    low = window.center - window.width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - low) / window.width
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def scale_to_uint8(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Map ``[low, high]`` linearly to uint8 [0, 255] (clipped); both default to the array's own min/max.

    Used for intensities without a Hounsfield window: radiographs without a VOI window, the output of a
    DICOM VOI LUT (whose range is given), 16-bit radiograph PNGs. A flat image maps to 0.
    """
    values = np.asarray(values, dtype=np.float32)
    low = float(values.min()) if low is None else float(low)
    high = float(values.max()) if high is None else float(high)
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint((values - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)
