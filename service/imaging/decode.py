"""The service's one entry point from image bytes to a :class:`~service.core.types.DecodedImage`.

The format is sniffed from the bytes and must agree with the declared media type. Sizes are read from the
header (PNG IHDR, JPEG SOF, DICOM Rows x Columns x NumberOfFrames) and refused above ``max_pixels``
before any pixel is decoded, so a small upload cannot expand into gigabytes. PNG/JPEG follow the data
engine's file conventions (16-bit PNG = CT stored as HU + 1024, 8-bit = a display image); DICOM goes
through :mod:`service.imaging.dicom`. Every failure is a :class:`~service.errors.ServiceError`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from service.core.types import MEDIA_TYPES, DecodedImage, ImageInput
from service.errors import ErrorCode, ServiceError, invalid
from service.imaging.dicom import DICOM_MAGIC_OFFSET, decode_dicom, read_dicom_geometry, short_reason
from service.imaging.windowing import PNG_HU_OFFSET, scale_to_uint8, window_hounsfield

FORMAT_BY_MEDIA_TYPE = {"image/png": "png", "image/jpeg": "jpeg", "application/dicom": "dicom"}
FORMAT_NAMES = {"png": "PNG", "jpeg": "JPEG", "dicom": "DICOM"}
MODALITY_HINTS = ("ct", "cxr")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8"
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # how Pillow opens 16-bit grayscale PNGs


def decode_image(image: ImageInput, max_pixels: int) -> DecodedImage:
    """Decode ``image`` into pixels in physical units and the uint8 display image the model sees.

    Raises ServiceError: INVALID_ARGUMENT (field "image", "image.frame" or "image.modality") for empty,
    unrecognised, mislabelled, truncated or undecodable input; PAYLOAD_TOO_LARGE when
    width x height x frames exceeds ``max_pixels`` (checked on the header, before decoding).
    """
    if not image.data:
        raise invalid("image is empty", "image")
    declared = _declared_format(image.media_type)
    sniffed = sniff_format(image.data)
    if sniffed is None and declared == "dicom":
        sniffed = "dicom"  # a DICOM stream without preamble; read_dicom decides whether it is one
    if sniffed is None:
        raise invalid(f"image bytes are not a {FORMAT_NAMES[declared]} file as media type {image.media_type!r} "
                      "says, nor a PNG, JPEG or DICOM file", "image")
    if sniffed != declared:
        raise invalid(f"media type {image.media_type!r} does not match the image bytes, which are a "
                      f"{FORMAT_NAMES[sniffed]} file", "image")

    if sniffed == "dicom":
        rows, columns, frames = read_dicom_geometry(image.data)
        check_pixel_budget(columns, rows, frames, max_pixels)
        hint = image.modality.strip().lower()
        return decode_dicom(image.data, image.frame, hint if hint in MODALITY_HINTS else "")
    return _decode_raster(image, sniffed, max_pixels)


def sniff_format(data: bytes) -> str | None:
    """"png", "jpeg" or "dicom" from the magic bytes (DICOM: 'DICM' at byte 128); None when none match."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    return None


def check_pixel_budget(width: int, height: int, frames: int, max_pixels: int) -> None:
    """PAYLOAD_TOO_LARGE when ``width x height x frames`` exceeds ``max_pixels``."""
    total = width * height * frames
    if total > max_pixels:
        size = f"{width} x {height}" + (f" x {frames} frames" if frames > 1 else "")
        raise ServiceError(ErrorCode.PAYLOAD_TOO_LARGE,
                           f"image is {size} = {total} pixels, more than the {max_pixels} this server accepts",
                           "image")


def _declared_format(media_type: str) -> str:
    name = (media_type or "").split(";", 1)[0].strip().lower()
    if name not in FORMAT_BY_MEDIA_TYPE:
        shown = f"media type {media_type!r} is not supported" if name else "image media type is missing"
        raise invalid(f"{shown}; expected one of {', '.join(MEDIA_TYPES)}", "image")
    return FORMAT_BY_MEDIA_TYPE[name]


def _decode_raster(image: ImageInput, fmt: str, max_pixels: int) -> DecodedImage:
    """PNG/JPEG: header size check, then decode; 16-bit grayscale is CT as HU + 1024 unless hinted "cxr"."""
    name = FORMAT_NAMES[fmt]
    hint = image.modality.strip().lower()
    if hint and hint not in MODALITY_HINTS:
        raise invalid(f"modality hint {image.modality!r} is not one of {', '.join(MODALITY_HINTS)}",
                      "image.modality")
    if image.frame != 0:
        raise invalid(f"frame {image.frame} is out of range: a {name} image has a single frame, 0", "image.frame")
    _allow_in_pillow(max_pixels)
    too_large = ServiceError(ErrorCode.PAYLOAD_TOO_LARGE,
                             f"image exceeds the {max_pixels} pixels this server accepts", "image")
    try:
        opened = Image.open(io.BytesIO(image.data), formats=[name])  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise too_large from None
    except Exception as exc:  # Pillow raises many types for broken files
        raise invalid(f"image is not a readable {name} file ({short_reason(exc)})", "image") from None
    with opened:
        width, height = opened.size
        check_pixel_budget(width, height, 1, max_pixels)
        try:
            opened.load()
            if opened.mode in _SIXTEEN_BIT_MODES:
                stored = np.asarray(opened).astype(np.float32)
                gray = None
            else:
                gray = np.asarray(opened if opened.mode == "L" else opened.convert("L"))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise too_large from None
        except Exception as exc:
            raise invalid(f"{name} image is truncated or corrupt ({short_reason(exc)})", "image") from None

    if gray is not None:
        # An 8-bit file is already a display image, CT included (no Hounsfield units to recover).
        return DecodedImage(pixels=gray.astype(np.float32), display=gray, modality=hint or "cxr", source=fmt)
    if hint == "cxr":
        return DecodedImage(pixels=stored, display=scale_to_uint8(stored), modality="cxr", source=fmt)
    hu = stored - PNG_HU_OFFSET
    return DecodedImage(pixels=hu, display=window_hounsfield(hu), modality="ct", source=fmt)


def _allow_in_pillow(max_pixels: int) -> None:
    """Keep Pillow's process-wide decompression-bomb guard at or above our per-call limit.

    Our check on the header is the one that decides; Pillow's guard (which ``training.data.cases`` lowers
    for dataset files) must not refuse what ``max_pixels`` allows, and when it fires first its error is
    mapped to PAYLOAD_TOO_LARGE above. Raising it only ever upwards makes concurrent calls harmless.
    """
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels

