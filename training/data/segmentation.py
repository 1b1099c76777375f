"""Where organ masks come from: the dataset's own mask folder, or an organ segmenter."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class OrganSegmenter(Protocol):
    """Predicts organ masks for datasets that have none (the ONNX segmenter implements this)."""

    def segment(self, image: np.ndarray, modality: str, pixel_spacing_mm: tuple[float, float]) -> np.ndarray:
        """Return a uint8 mask of global organ labels (``anatomy.ORGANS``), same height and width as
        ``image``; ``image`` is in the dataset's units (CT: Hounsfield units, radiographs: uint8)."""
        ...
