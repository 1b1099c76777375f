"""The one record every dataset adapter produces: a detection case (image, lesion boxes, organ masks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from service.imaging.windowing import PNG_HU_OFFSET, scale_to_uint8
from training.data.anatomy import MODALITIES
from training.data.boxes import BoxPx, validate_box_px
from training.data.errors import DataError

# Pillow refuses images above this many pixels before decoding them (decompression bombs).
DATASET_MAX_PIXELS = 8192 * 8192
Image.MAX_IMAGE_PIXELS = DATASET_MAX_PIXELS


@dataclass
class LesionBox:
    """One annotated lesion: a category and a tight pixel box, optionally a mask and a size."""

    label: str
    box_px: BoxPx  # (x1, y1, x2, y2), x2/y2 exclusive, pixels of the source image
    size_mm: float | None = None  # longest diameter when the dataset gives it
    mask: np.ndarray | None = None  # bool (H, W) when the dataset has a lesion segmentation
    organ_hint: str | None = None  # organ named by the dataset itself (e.g. DeepLesion's coarse type)


@dataclass
class DetectionCase:
    """One image of a detection dataset, in the units the pipeline expects.

    ``load_image`` returns Hounsfield units (float32) for CT and uint8 intensities for radiographs.
    """

    case_id: str
    image_path: Path
    modality: str  # "ct" | "cxr"
    width: int
    height: int
    pixel_spacing_mm: tuple[float, float]  # (row, col)
    lesions: list[LesionBox] = field(default_factory=list)
    organ_mask_path: Path | None = None
    view: str = ""
    source: str = ""
    hu_offset: float = PNG_HU_OFFSET  # stored value minus this = HU, for 16-bit CT PNGs

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise DataError(f"unsupported modality {self.modality!r}", file=str(self.image_path))
        for lesion in self.lesions:
            try:
                lesion.box_px = validate_box_px(lesion.box_px, self.width, self.height)
            except ValueError as exc:
                raise DataError(f"lesion {lesion.label!r}: {exc}", file=str(self.image_path)) from None

    def load_image(self) -> np.ndarray:
        """Read the image: CT as float32 HU, CXR as uint8. Raises DataError if unreadable or mis-sized."""
        if self.image_path.suffix.lower() in (".dcm", ".dicom"):
            pixels = read_dicom_pixels(self.image_path, self.modality)
        else:
            pixels = read_png(self.image_path)
            if self.modality == "ct":
                pixels = pixels.astype(np.float32) - self.hu_offset
            elif pixels.dtype != np.uint8:
                pixels = scale_to_uint8(pixels)
        if pixels.shape != (self.height, self.width):
            raise DataError(
                f"image is {pixels.shape[1]}x{pixels.shape[0]}, annotations say {self.width}x{self.height}",
                file=str(self.image_path),
            )
        return pixels

    def load_organ_mask(self) -> np.ndarray | None:
        """Read the organ label mask (uint8, global labels) if the case has one."""
        if self.organ_mask_path is None:
            return None
        mask = read_png(self.organ_mask_path)
        if mask.shape != (self.height, self.width):
            raise DataError(
                f"organ mask is {mask.shape[1]}x{mask.shape[0]} but the image is {self.width}x{self.height}",
                file=str(self.organ_mask_path),
            )
        return mask.astype(np.uint8)


def read_png(path: Path) -> np.ndarray:
    """Decode a single-channel image file to a 2-D array (uint8 or uint16/int32 for 16-bit)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGB", "RGBA", "P", "LA"):
                img = img.convert("L")
            array = np.asarray(img)
    except FileNotFoundError:
        raise DataError("image file not found", file=str(path)) from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"unreadable image ({exc})", file=str(path)) from None
    if array.ndim != 2:
        raise DataError(f"expected a single-channel image, got shape {array.shape}", file=str(path))
    return array


def read_dicom_pixels(path: Path, modality: str) -> np.ndarray:
    """Decode frame 0 of a DICOM file as the service does (``service.imaging``): CT as HU after the
    modality LUT, radiographs as the uint8 display image (VOI LUT or window, MONOCHROME1 inverted)."""
    from service.core.types import ImageInput
    from service.errors import ServiceError
    from service.imaging.decode import decode_image

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError("DICOM file not found", file=str(path)) from None
    try:
        decoded = decode_image(ImageInput(data=data, media_type="application/dicom", modality=modality),
                               max_pixels=DATASET_MAX_PIXELS)
    except ServiceError as exc:
        raise DataError(f"unreadable DICOM ({exc.message})", file=str(path)) from None
    return decoded.pixels if modality == "ct" else decoded.display
