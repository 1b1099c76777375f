"""DICOM Part-10 decoding: header first (size, frames), then one frame through the DICOM display pipeline.

Order of operations, as the standard defines it: stored values → modality LUT (Hounsfield units for CT) →
display. CT is displayed through :data:`~service.imaging.windowing.ABDOMEN_WINDOW` (the window the model
was trained with, whatever window the file suggests); every other monochrome image through the file's own
VOI LUT or window, else min-max, with MONOCHROME1 inverted so that dense is bright. Colour images become
luminance. Every failure is a :class:`~service.errors.ServiceError` naming what is wrong with the file.
"""

from __future__ import annotations

import functools
import io
import math
import time

import numpy as np

from service.core.types import DecodedImage
from service.errors import ErrorCode, ServiceError, invalid
from service.imaging.windowing import scale_to_uint8, window_hounsfield

PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
SERVICE_MODALITY = {"CT": "ct", "CR": "cxr", "DX": "cxr"}  # DICOM Modality → the service's modality names
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as Pillow's "L" conversion
DICOM_MAGIC_OFFSET = 128
MAX_HEADER_READS = 250_000  # ~125 000 data elements; real headers need far fewer
MAX_PARSE_SECONDS = 2.0  # the other bound of an element bomb: parsing time (real headers take milliseconds)

# Attributes the display pipeline reads, copied into a per-frame header (see _frame_header).
_DISPLAY_KEYWORDS = ("PhotometricInterpretation", "SamplesPerPixel", "BitsAllocated", "BitsStored",
                     "PixelRepresentation", "RescaleIntercept", "RescaleSlope", "RescaleType",
                     "ModalityLUTSequence", "VOILUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction",
                     "PixelSpacing", "ImagerPixelSpacing")
# Enhanced multi-frame objects keep those attributes in functional groups instead of the top level.
_FUNCTIONAL_GROUPS = {
    "PixelValueTransformationSequence": ("RescaleIntercept", "RescaleSlope", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
    "PixelMeasuresSequence": ("PixelSpacing",),
}


class _TooManyReads(Exception):
    """The parser asked for more pieces of the file than any real header needs."""


class _BoundedBytes(io.BytesIO):
    """The file's bytes for pydicom, refusing to be read in more than :data:`MAX_HEADER_READS` pieces or for
    longer than :data:`MAX_PARSE_SECONDS`.

    pydicom reads each data element with one or two ``read`` calls and parses some 50 000 to 150 000
    elements a second, so a few MiB of tiny or empty elements (zeros parse as such) would hold a worker
    for minutes: an element bomb. Real headers, enhanced multi-frame ones included, stay far below both
    bounds (pydicom's CT_small: 534 reads).
    """

    def __init__(self, data: bytes):
        super().__init__(data)
        self.reads = 0
        self.started = time.perf_counter()

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if self.reads > MAX_HEADER_READS or (
                self.reads % 1024 == 0 and time.perf_counter() - self.started > MAX_PARSE_SECONDS):
            raise _TooManyReads()
        return super().read(size)


def read_dicom(data: bytes, *, stop_before_pixels: bool):
    """Parse a DICOM file (with or without the 128-byte preamble and 'DICM' marker) into a pydicom Dataset.

    A file without the marker is read with ``force=True`` and accepted only if it has image attributes
    (Rows and Columns), so that arbitrary bytes are not mistaken for a dataset. A file that needs more than
    :data:`MAX_HEADER_READS` reads to parse (an element bomb) is refused with PAYLOAD_TOO_LARGE.
    """
    import pydicom

    has_marker = data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == b"DICM"
    try:
        ds = pydicom.dcmread(_BoundedBytes(data), force=not has_marker, stop_before_pixels=stop_before_pixels)
        looks_like_image = has_marker or ("Rows" in ds and "Columns" in ds)
    except _TooManyReads:
        raise ServiceError(ErrorCode.PAYLOAD_TOO_LARGE, "DICOM header holds too many data elements to parse "
                           f"(the limit is about {MAX_HEADER_READS // 2} elements or {MAX_PARSE_SECONDS:g} s)",
                           "image") from None
    except Exception as exc:  # pydicom raises many types for broken files
        raise invalid(f"image is not a readable DICOM file ({short_reason(exc)})", "image") from None
    if not looks_like_image:
        raise invalid("image is not a DICOM image: no 'DICM' marker at byte 128 and no Rows/Columns attributes",
                      "image")
    return ds


def read_dicom_geometry(data: bytes) -> tuple[int, int, int]:
    """(rows, columns, frames) of a DICOM file, read with ``stop_before_pixels`` so nothing is decoded."""
    ds = read_dicom(data, stop_before_pixels=True)
    try:
        return image_geometry(ds)
    except ServiceError:
        raise
    except Exception as exc:  # a malformed header value
        raise invalid(f"DICOM header could not be read ({short_reason(exc)})", "image") from None


def image_geometry(ds) -> tuple[int, int, int]:
    """(rows, columns, frames) from a DICOM header; INVALID_ARGUMENT when it describes no image."""
    if "Rows" not in ds or "Columns" not in ds:
        raise invalid("DICOM has no pixel data (no Rows/Columns: not an image object)", "image")
    return _positive_int(ds, "Rows"), _positive_int(ds, "Columns"), _positive_int(ds, "NumberOfFrames", 1)


def decode_dicom(data: bytes, frame: int = 0, modality_hint: str = "") -> DecodedImage:
    """Decode frame ``frame`` of a DICOM file into a :class:`DecodedImage` (the Dataset kept in ``dicom``).

    Check :func:`read_dicom_geometry` against the pixel budget first: this decodes the frame it is given.
    ``modality_hint`` ("ct" | "cxr") is used only when the file has no Modality tag.
    """
    ds = read_dicom(data, stop_before_pixels=False)
    try:
        return _decode_frame(ds, frame, modality_hint)
    except (ServiceError, MemoryError):
        raise
    except Exception as exc:  # anything pydicom or numpy raise on a malformed header
        raise invalid(f"DICOM could not be decoded ({short_reason(exc)})", "image") from None


def _decode_frame(ds, frame: int, modality_hint: str) -> DecodedImage:
    rows, columns, frames = image_geometry(ds)
    keyword = next((k for k in PIXEL_DATA_KEYWORDS if k in ds), None)
    if keyword is None:
        raise invalid("DICOM has no pixel data", "image")
    if not 0 <= frame < frames:
        raise invalid(f"frame {frame} is out of range: the DICOM has {frames} frame(s), numbered 0 to {frames - 1}",
                      "image.frame")
    required = ("SamplesPerPixel", "BitsAllocated", "PhotometricInterpretation")
    if keyword == "PixelData":
        required += ("BitsStored", "PixelRepresentation")
    missing = [k for k in required if k not in ds]
    if missing:
        raise invalid(f"DICOM pixel data cannot be interpreted: missing {', '.join(missing)}", "image")

    syntax = _transfer_syntax(ds, keyword)
    decoder = _decoder_for(syntax)
    if not syntax.is_compressed:
        _check_native_length(ds, keyword, rows, columns, frames)
    try:
        array, meta = decoder.as_array(ds, index=frame)
    except Exception as exc:
        raise invalid(f"DICOM pixel data could not be decoded as {_syntax_label(syntax)}: {short_reason(exc)}",
                      "image") from None

    header = _frame_header(ds, frame)
    photometric = str(meta.get("photometric_interpretation", ds.PhotometricInterpretation)).upper()
    tag = str(ds.get("Modality", "") or "").strip().upper()
    modality = SERVICE_MODALITY.get(tag, tag.lower()) or modality_hint or "unknown"
    if array.ndim == 3 or photometric == "PALETTE COLOR":
        pixels, display = _colour_to_luminance(array, photometric, ds)
    else:
        pixels, display = _monochrome(array, header, photometric, modality)
    return DecodedImage(pixels=pixels, display=display, modality=modality,
                        pixel_spacing_mm=_pixel_spacing(header), source="dicom", dicom=ds)


def _monochrome(array: np.ndarray, header, photometric: str, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """Physical values (modality LUT) and the uint8 display image of one grayscale frame."""
    from pydicom.pixels import apply_modality_lut

    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise invalid("DICOM float pixel data contains NaN or infinite values", "image")
    values = apply_modality_lut(array, header)
    if modality == "ct":
        # HU already say what is dense; the photometric interpretation only concerns stored-value display.
        display = window_hounsfield(values)
    else:
        display = _voi_display(values, header)
        if photometric == "MONOCHROME1":
            display = 255 - display
    return np.asarray(values, dtype=np.float32), display


def _voi_display(values: np.ndarray, header) -> np.ndarray:
    """uint8 through the file's VOI LUT (preferred) or window, scaled by that transform's output range;
    min-max when the file has neither or its VOI module is unusable."""
    from pydicom.pixels import apply_voi, apply_windowing

    lut = header.get("VOILUTSequence")
    try:
        if lut and "LUTDescriptor" in lut[0] and "LUTData" in lut[0]:
            entries, first_mapped = int(lut[0].LUTDescriptor[0]) or 2**16, int(lut[0].LUTDescriptor[1])
            whole_lut = apply_voi(np.arange(first_mapped, first_mapped + entries, dtype=np.int64), header)
            shown = apply_voi(np.rint(values).astype(np.int64), header)
            return scale_to_uint8(shown, whole_lut.min(), whole_lut.max())
        if "WindowCenter" in header and "WindowWidth" in header:
            low, high = apply_windowing(np.array([-np.inf, np.inf]), header)
            return scale_to_uint8(apply_windowing(np.asarray(values, dtype=np.float64), header), low, high)
    except Exception:  # a malformed VOI module should not cost the caller the image
        pass
    return scale_to_uint8(values)


def _colour_to_luminance(array: np.ndarray, photometric: str, ds) -> tuple[np.ndarray, np.ndarray]:
    """Luminance of a colour frame (RGB, YBR or palette colour): float values and the uint8 display."""
    from pydicom.pixels import apply_color_lut, convert_color_space

    if photometric == "PALETTE COLOR":
        array = apply_color_lut(array, ds)
    elif photometric.startswith("YBR"):
        array = convert_color_space(array, photometric, "RGB")
    elif photometric != "RGB":
        raise invalid(f"DICOM colour space {photometric} is not supported (RGB, YBR_FULL, YBR_FULL_422 and "
                      "PALETTE COLOR are)", "image")
    luminance = array[..., :3].astype(np.float32) @ LUMA_WEIGHTS
    if array.dtype == np.uint8:
        return luminance, np.clip(np.rint(luminance), 0, 255).astype(np.uint8)
    return luminance, scale_to_uint8(luminance)


def _transfer_syntax(ds, keyword: str):
    """The dataset's transfer syntax; for files without file meta, inferred from how the reader parsed them."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return UID(meta.TransferSyntaxUID)
    if ds[keyword].is_undefined_length:
        raise invalid("DICOM has compressed pixel data but no Transfer Syntax UID to say how it is compressed",
                      "image")
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        raise invalid("DICOM has no Transfer Syntax UID and its encoding cannot be inferred", "image")
    syntax = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    # pydicom's decoders read the syntax from the file meta; record what the reader found.
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    return syntax


def _decoder_for(syntax):
    """The pydicom decoder for ``syntax``; INVALID_ARGUMENT naming the syntax when none is installed."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except (NotImplementedError, ValueError):
        decoder = None
    if decoder is None or not decoder.is_available:
        raise invalid(f"DICOM transfer syntax {_syntax_label(syntax)} cannot be decoded by this server; supported: "
                      f"{', '.join(_supported_transfer_syntaxes())}", "image")
    return decoder


def _check_native_length(ds, keyword: str, rows: int, columns: int, frames: int) -> None:
    """Uncompressed pixel data must be as long as the header says (a trailing pad byte or a partial frame
    of padding is tolerated, as pydicom does; a whole extra frame means the header is wrong)."""
    from pydicom.pixels.utils import get_expected_length

    expected = get_expected_length(ds, unit="bytes")
    actual = len(ds[keyword].value)
    frame_bytes = max(2, expected // frames)
    if actual < expected or actual - expected >= frame_bytes:
        samples, bits = ds.SamplesPerPixel, ds.BitsAllocated
        raise invalid(
            f"DICOM pixel data is {actual} bytes but Rows x Columns x SamplesPerPixel x BitsAllocated x frames = "
            f"{rows} x {columns} x {samples} x {bits} bits x {frames} needs {expected} bytes "
            f"({'truncated' if actual < expected else 'more data than the header describes'})", "image")


def _frame_header(ds, frame: int):
    """A header-only Dataset with the display attributes that hold for ``frame``: the top-level ones,
    overridden by the shared and then the per-frame functional groups of enhanced multi-frame objects."""
    from pydicom.dataset import Dataset

    header = Dataset()
    for keyword in _DISPLAY_KEYWORDS:
        if keyword in ds:
            header.add(ds[keyword])
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    items = ([shared[0]] if shared else []) + ([per_frame[frame]] if per_frame and frame < len(per_frame) else [])
    for item in items:
        for sequence, keywords in _FUNCTIONAL_GROUPS.items():
            group = item.get(sequence)
            if group:
                for keyword in keywords:
                    if keyword in group[0]:
                        header.add(group[0][keyword])
    if getattr(ds, "file_meta", None) is not None:
        header.file_meta = ds.file_meta  # apply_voi reads the byte order of OW LUT data from it
    return header


def _pixel_spacing(header) -> tuple[float, float] | None:
    """(row, column) spacing in mm from PixelSpacing, else ImagerPixelSpacing; None when absent or invalid."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = header.get(keyword)
        try:
            row, column = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if all(math.isfinite(v) and v > 0 for v in (row, column)):
            return (row, column)
    return None


def _positive_int(ds, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, None)
    if value in (None, "") and default is not None:
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if number <= 0:
        raise invalid(f"DICOM {keyword} {value!r} is not a positive integer", "image")
    return number


@functools.cache
def _supported_transfer_syntaxes() -> tuple[str, ...]:
    """Names of the transfer syntaxes whose pixel data this installation can decode (plugins are fixed
    for the life of the process, so this is computed once)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import AllTransferSyntaxes

    names = []
    for uid in AllTransferSyntaxes:
        try:
            if get_decoder(uid).is_available:
                names.append(uid.name)
        except (NotImplementedError, ValueError):
            continue
    return tuple(names)


def _syntax_label(syntax) -> str:
    name = syntax.name
    return f"{syntax} ({name})" if name != str(syntax) else f"{syntax} (not a known transfer syntax)"


def short_reason(exc: BaseException) -> str:
    """A one-line, bounded description of a library exception, safe to show to the caller."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
