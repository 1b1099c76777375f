"""Easy-stage images: the image as the model sees it, with the referenced boxes drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from service.imaging.windowing import PNG_HU_OFFSET, window_hounsfield
from training.data.boxes import BoxPx

BOX_COLOUR = (255, 0, 0)  # red: absent from grayscale anatomy, so the box cannot be mistaken for tissue


def display_image(pixels: np.ndarray, modality: str) -> np.ndarray:
    """uint8 grayscale as shown to the model: CT through the abdomen window, radiographs as they are."""
    return window_hounsfield(pixels) if modality == "ct" else pixels.astype(np.uint8)


def draw_boxes(gray: np.ndarray, boxes: Sequence[BoxPx], width_px: int | None = None) -> Image.Image:
    """RGB copy of ``gray`` with each box outlined; line width scales with the image (≈ 1% of the side)."""
    image = Image.fromarray(gray).convert("RGB")
    draw = ImageDraw.Draw(image)
    line = width_px or max(1, round(min(gray.shape) / 128))
    for x1, y1, x2, y2 in boxes:
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=BOX_COLOUR, width=line)
    return image


def load_model_image(path: Path, modality: str) -> Image.Image:
    """A dataset image file as the model sees it (RGB): CT through the abdomen window, radiographs as stored.

    Files written by the data engine: CT as 16-bit PNG of HU + 1024, CXR as 8-bit grayscale, Easy copies
    as RGB with the boxes already drawn on the display image (used as they are).
    """
    image = Image.open(path)
    if image.mode == "RGB":
        return image
    pixels = np.asarray(image)
    if modality == "ct":
        pixels = pixels.astype(np.int32) - PNG_HU_OFFSET
    return Image.fromarray(display_image(pixels, modality)).convert("RGB")
