"""The image exactly as training fed it to the model, and the mapping of boxes between it and the original.

The model's image processor stretch-resizes to its square input with no crop and no letterbox
(``training.medclm.model.build_image_processor``), so a box normalised to [0, 1000) relative to the image
the model saw maps back to the caller's original pixels by scaling alone. The box arithmetic itself lives
in :mod:`training.data.boxes`, the one place the box contract is defined.
"""

from __future__ import annotations

from typing import Sequence

from PIL import Image

from service.core.types import DecodedImage
from training.data.boxes import BoxNorm, BoxPx, denormalize_box, normalize_box


def model_view_image(decoded: DecodedImage) -> Image.Image:
    """RGB image at the original size, as ``training.data.drawing.load_model_image`` produces for training:
    the uint8 display image (CT windowed, VOI applied, MONOCHROME1 inverted) copied to three channels.
    Resizing is left to the model's image processor."""
    return Image.fromarray(decoded.display).convert("RGB")


def box_norm_to_px(box_norm: Sequence[int], width: int, height: int) -> BoxPx:
    """A [0, 1000) box from the model → (x1, y1, x2, y2) float pixels of the ``width`` x ``height`` original."""
    return denormalize_box(box_norm, width, height)


def box_px_to_norm(box_px: Sequence[float], width: int, height: int) -> BoxNorm:
    """(x1, y1, x2, y2) pixels of the ``width`` x ``height`` original → the model's [0, 1000) integers."""
    return normalize_box(box_px, width, height)
