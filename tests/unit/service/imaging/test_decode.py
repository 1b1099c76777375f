"""decode_image: format sniffing, size limits before decoding, PNG/JPEG conventions and the DICOM pipeline,
on pydicom's own test files and on files the tests derive from them."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from service.core.types import DecodedImage, ImageInput
from service.errors import ErrorCode, ServiceError
from service.imaging.decode import decode_image
from service.imaging.windowing import PNG_HU_OFFSET, window_hounsfield

DICOM = "application/dicom"
MAX_PIXELS = 10_000_000


def decode(data: bytes, media_type: str = DICOM, max_pixels: int = MAX_PIXELS, **fields) -> DecodedImage:
    return decode_image(ImageInput(data=data, media_type=media_type, **fields), max_pixels)


def refused(data: bytes, media_type: str = DICOM, max_pixels: int = MAX_PIXELS, **fields) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        decode(data, media_type, max_pixels, **fields)
    return caught.value


def pydicom_example(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as handle:
        return handle.read()


def pydicom_example_dataset(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file(name))


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    (Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` 8-bit grayscale, with valid CRCs and no pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def gradient(height: int = 48, width: int = 40) -> np.ndarray:
    return (np.add.outer(np.arange(height), np.arange(width)) * 255 // (height + width - 2)).astype(np.uint8)


# ------------------------------------------------------------------------------------------ DICOM, CT


def test_ct_small_is_read_in_hounsfield_units_and_windowed():
    ds = pydicom_example_dataset("CT_small.dcm")
    decoded = decode(pydicom_example("CT_small.dcm"))

    assert decoded.modality == "ct" and decoded.source == "dicom"
    assert (decoded.height, decoded.width) == (128, 128)
    # The modality LUT is applied: the lowest stored value (128) lands at 128 + RescaleIntercept (-1024).
    stored = ds.pixel_array
    assert float(ds.RescaleIntercept) == -1024 and int(stored.min()) == 128
    assert decoded.pixels.dtype == np.float32
    assert decoded.pixels.min() == -896 and decoded.pixels.max() == 2191 - 1024
    np.testing.assert_array_equal(decoded.pixels, stored.astype(np.float32) - 1024)
    assert -1024 <= float(np.median(decoded.pixels)) <= 3071
    np.testing.assert_array_equal(decoded.display, window_hounsfield(decoded.pixels))
    assert decoded.pixel_spacing_mm == pytest.approx((0.661468, 0.661468))
    assert decoded.dicom.SOPInstanceUID == ds.SOPInstanceUID


def test_dicom_without_preamble_decodes_like_the_part10_file():
    ds = pydicom_example_dataset("CT_small.dcm")
    del ds.file_meta
    ds.preamble = None
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    raw = buffer.getvalue()
    assert raw[128:132] != b"DICM"

    decoded = decode(raw)

    np.testing.assert_array_equal(decoded.pixels, decode(pydicom_example("CT_small.dcm")).pixels)
    assert decoded.modality == "ct"


# ------------------------------------------------------------------------------------ DICOM, other


def test_mr_decodes_but_reports_its_own_modality_and_uses_the_files_window():
    ds = pydicom_example_dataset("MR_small.dcm")
    decoded = decode(pydicom_example("MR_small.dcm"))

    assert decoded.modality == "mr"
    np.testing.assert_array_equal(decoded.pixels, ds.pixel_array.astype(np.float32))
    low = float(ds.WindowCenter) - float(ds.WindowWidth) / 2
    high = float(ds.WindowCenter) + float(ds.WindowWidth) / 2
    assert (decoded.display[decoded.pixels <= low] == 0).all()
    assert (decoded.display[decoded.pixels >= high] == 255).all()
    order = np.argsort(decoded.pixels, axis=None, kind="stable")
    assert (np.diff(decoded.display.ravel()[order].astype(int)) >= 0).all()  # monotonic in intensity
    assert decoded.pixel_spacing_mm == pytest.approx((0.3125, 0.3125))


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
def test_lossless_transfer_syntaxes_give_the_same_pixels(name):
    syntax = pydicom_example_dataset(name).file_meta.TransferSyntaxUID
    if not get_decoder(syntax).is_available:
        pytest.skip(f"no decoder for {syntax.name} installed")
    reference = decode(pydicom_example("MR_small.dcm"))

    decoded = decode(pydicom_example(name))

    np.testing.assert_array_equal(decoded.pixels, reference.pixels)
    np.testing.assert_array_equal(decoded.display, reference.display)


def radiograph_from_mr(photometric: str, keep_window: bool = False) -> pydicom.Dataset:
    """MR_small relabelled as a DX radiograph with imager pixel spacing only."""
    ds = pydicom_example_dataset("MR_small.dcm")
    ds.Modality = "DX"
    ds.PhotometricInterpretation = photometric
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.2, 0.3]
    if not keep_window:
        del ds.WindowCenter, ds.WindowWidth
    return ds


@pytest.mark.parametrize("keep_window", [False, True])
def test_monochrome1_radiograph_is_inverted_so_dense_is_bright(keep_window):
    mono2 = decode(dicom_bytes(radiograph_from_mr("MONOCHROME2", keep_window)))
    mono1 = decode(dicom_bytes(radiograph_from_mr("MONOCHROME1", keep_window)))

    assert mono1.modality == mono2.modality == "cxr"
    np.testing.assert_array_equal(mono1.pixels, mono2.pixels)  # physical values do not depend on display
    np.testing.assert_array_equal(mono1.display, 255 - mono2.display)
    if not keep_window:  # min-max: the brightest stored value is the darkest shown for MONOCHROME1
        assert mono2.display[mono2.pixels == mono2.pixels.max()].min() == 255
        assert mono1.display[mono1.pixels == mono1.pixels.max()].max() == 0
    assert mono1.pixel_spacing_mm == pytest.approx((0.2, 0.3))  # ImagerPixelSpacing when no PixelSpacing


def test_voi_lut_sequence_is_preferred_over_the_window():
    from pydicom.dataset import Dataset

    ds = radiograph_from_mr("MONOCHROME2", keep_window=True)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "US", [0 if v < 1000 else 4095 for v in range(4096)])  # threshold at 1000
    ds.VOILUTSequence = [item]

    decoded = decode(dicom_bytes(ds))

    np.testing.assert_array_equal(decoded.display, np.where(decoded.pixels < 1000, 0, 255).astype(np.uint8))


def test_multiframe_frame_selects_one_frame_and_out_of_range_is_refused():
    ds = pydicom_example_dataset("rtdose.dcm")
    frames = int(ds.NumberOfFrames)
    assert frames > 3

    third = decode(pydicom_example("rtdose.dcm"), frame=3)

    np.testing.assert_array_equal(third.pixels, ds.pixel_array[3].astype(np.float32))
    assert not np.array_equal(third.pixels, decode(pydicom_example("rtdose.dcm"), frame=0).pixels)
    assert third.modality == "rtdose"
    for frame in (frames, -1):
        error = refused(pydicom_example("rtdose.dcm"), frame=frame)
        assert error.code is ErrorCode.INVALID_ARGUMENT and error.field == "image.frame"
        assert str(frames) in error.message


def test_colour_dicom_becomes_luminance():
    ds = pydicom_example_dataset("SC_rgb_rle_2frame.dcm")
    rgb = ds.pixel_array[1].astype(np.float32)

    decoded = decode(pydicom_example("SC_rgb_rle_2frame.dcm"), frame=1)

    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(decoded.pixels, expected, atol=1e-3)
    assert np.abs(decoded.display.astype(int) - np.rint(expected)).max() <= 1
    assert decoded.display.shape == (100, 100) and decoded.modality == "ot"


# ------------------------------------------------------------------------------------ DICOM, broken


def test_truncated_pixel_data_names_expected_and_actual_bytes():
    ds = pydicom_example_dataset("CT_small.dcm")
    ds.PixelData = ds.PixelData[:-100]

    error = refused(dicom_bytes(ds))

    assert error.code is ErrorCode.INVALID_ARGUMENT and error.field == "image"
    assert "32768" in error.message and "32668" in error.message and "truncated" in error.message


@pytest.mark.filterwarnings("ignore:The pixel data is .* excess padding")
def test_pixel_data_longer_than_a_whole_frame_is_refused_but_padding_is_tolerated():
    ds = pydicom_example_dataset("CT_small.dcm")
    original = ds.PixelData
    ds.PixelData = original * 2
    assert "more data than the header" in refused(dicom_bytes(ds)).message

    padded = decode(pydicom_example("MR_small_padded.dcm"))  # 128 bytes of trailing padding
    np.testing.assert_array_equal(padded.pixels, decode(pydicom_example("MR_small.dcm")).pixels)


def test_dicom_without_pixel_data_is_refused():
    ds = pydicom_example_dataset("CT_small.dcm")
    del ds.PixelData
    error = refused(dicom_bytes(ds))
    assert error.code is ErrorCode.INVALID_ARGUMENT and error.message == "DICOM has no pixel data"

    report = refused(pydicom_example("test-SR.dcm"))  # a structured report: no image at all
    assert "no pixel data" in report.message


def test_transfer_syntax_without_a_decoder_is_named_with_the_supported_ones():
    candidates = [UID(uid) for uid in ("1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57",
                                       "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.203",
                                       "1.2.840.10008.1.2.4.90")]
    missing = [uid for uid in candidates if not get_decoder(uid).is_available]
    if not missing:
        pytest.skip("every candidate compressed syntax has a decoder installed")
    syntax = missing[0]
    ds = pydicom_example_dataset("CT_small.dcm")
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(64)])
    ds["PixelData"].VR = "OB"

    error = refused(dicom_bytes(ds))

    assert error.code is ErrorCode.INVALID_ARGUMENT and error.field == "image"
    assert str(syntax) in error.message and syntax.name in error.message
    assert "supported:" in error.message and "Explicit VR Little Endian" in error.message


def test_corrupt_compressed_pixel_data_is_invalid_argument():
    ds = pydicom_example_dataset("CT_small.dcm")
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.5")  # RLE Lossless: decoded by pydicom itself
    ds.PixelData = encapsulate([b"\x00" * 20])
    ds["PixelData"].VR = "OB"

    error = refused(dicom_bytes(ds))

    assert error.code is ErrorCode.INVALID_ARGUMENT and "RLE Lossless" in error.message


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_float_pixel_data_is_refused(bad):
    ds = pydicom_example_dataset("CT_small.dcm")
    values = ds.pixel_array.astype(np.float32)
    del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.BitsAllocated = 32
    ds.FloatPixelData = values.tobytes()
    assert decode(dicom_bytes(ds)).pixels.shape == (128, 128)  # finite float data is fine

    values[5, 7] = bad
    ds.FloatPixelData = values.tobytes()
    error = refused(dicom_bytes(ds))
    assert error.code is ErrorCode.INVALID_ARGUMENT and "NaN or infinite" in error.message


def test_random_bytes_declared_as_dicom_are_not_a_dicom_image():
    noise = np.random.default_rng(7).bytes(4096)
    error = refused(noise, DICOM)
    assert error.code is ErrorCode.INVALID_ARGUMENT and error.field == "image"


# ----------------------------------------------------------------------------------------- limits


def test_dicom_size_is_checked_on_the_header_before_the_pixel_data():
    ds = pydicom_example_dataset("CT_small.dcm")
    ds.Rows = ds.Columns = 60000  # the pixel data no longer matches, but the size check comes first

    error = refused(dicom_bytes(ds))

    assert error.code is ErrorCode.PAYLOAD_TOO_LARGE and "60000 x 60000" in error.message


def test_dicom_budget_counts_every_frame():
    ds = pydicom_example_dataset("rtdose.dcm")
    per_frame = ds.Rows * ds.Columns
    frames = int(ds.NumberOfFrames)

    error = refused(pydicom_example("rtdose.dcm"), max_pixels=per_frame * frames - 1)
    assert error.code is ErrorCode.PAYLOAD_TOO_LARGE and f"{frames} frames" in error.message
    assert decode(pydicom_example("rtdose.dcm"), max_pixels=per_frame * frames).width == ds.Columns


@pytest.fixture
def pixels_never_decoded(monkeypatch):
    """Makes any attempt by Pillow to decode pixel data fail the test."""

    def forbidden(self):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden)


@pytest.mark.parametrize("pillow_guard", [None, 89_478_485])
def test_png_declaring_100000_squared_is_refused_from_its_header(monkeypatch, pixels_never_decoded, pillow_guard):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_guard)  # our check, then Pillow's own guard

    error = refused(png_header_only(100_000, 100_000), "image/png", max_pixels=50_000_000)

    assert error.code is ErrorCode.PAYLOAD_TOO_LARGE and error.field == "image"


def test_png_over_the_configured_limit_is_refused_without_decoding(pixels_never_decoded):
    error = refused(png_bytes(gradient(64, 64)), "image/png", max_pixels=64 * 64 - 1)
    assert error.code is ErrorCode.PAYLOAD_TOO_LARGE and "64 x 64" in error.message


def test_a_lower_pillow_guard_never_refuses_what_max_pixels_allows(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # e.g. lowered by another module of the process
    decoded = decode(png_bytes(gradient(64, 64)), "image/png", max_pixels=10_000)
    assert decoded.width == 64


# ------------------------------------------------------------------------------------------ PNG/JPEG


def test_16_bit_png_is_ct_stored_as_hu_plus_offset():
    hu = np.linspace(-1000, 1500, 30 * 20).reshape(30, 20).round().astype(np.int32)
    data = png_bytes((hu + PNG_HU_OFFSET).astype(np.uint16))

    decoded = decode(data, "image/png")

    assert decoded.modality == "ct" and decoded.source == "png" and decoded.pixel_spacing_mm is None
    np.testing.assert_array_equal(decoded.pixels, hu.astype(np.float32))
    np.testing.assert_array_equal(decoded.display, window_hounsfield(hu))


def test_16_bit_png_hinted_as_radiograph_is_stretched_to_8_bit():
    stored = np.linspace(100, 4000, 30 * 20).reshape(30, 20).astype(np.uint16)

    decoded = decode(png_bytes(stored), "image/png", modality="CXR")

    assert decoded.modality == "cxr"
    np.testing.assert_array_equal(decoded.pixels, stored.astype(np.float32))
    assert decoded.display.min() == 0 and decoded.display.max() == 255


@pytest.mark.parametrize("hint, modality", [("", "cxr"), ("cxr", "cxr"), ("ct", "ct")])
def test_8_bit_png_is_a_display_image_with_the_hinted_modality(hint, modality):
    gray = gradient()

    decoded = decode(png_bytes(gray), "image/png", modality=hint)

    assert decoded.modality == modality
    np.testing.assert_array_equal(decoded.display, gray)
    np.testing.assert_array_equal(decoded.pixels, gray.astype(np.float32))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "1"])
def test_colour_and_palette_png_become_luminance(mode):
    rgb = np.stack([gradient(), gradient()[::-1], np.full((48, 40), 90, np.uint8)], axis=-1)
    data = png_bytes(rgb, mode)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("L"))

    decoded = decode(data, "image/png")

    assert decoded.display.shape == (48, 40)
    np.testing.assert_array_equal(decoded.display, expected)


def test_jpeg_decodes_to_grayscale():
    gray = gradient()
    decoded = decode(jpeg_bytes(gray), "image/jpeg")
    assert decoded.source == "jpeg" and decoded.modality == "cxr" and decoded.display.shape == gray.shape
    assert np.abs(decoded.display.astype(int) - gray).max() <= 8  # lossy, but the same picture


# ----------------------------------------------------------------------------------- bad requests


def assert_invalid(error: ServiceError, field: str = "image", *words: str) -> None:
    assert error.code is ErrorCode.INVALID_ARGUMENT and error.field == field, (error.code, error.field)
    for word in words:
        assert word in error.message, error.message


def test_empty_bytes_and_unknown_media_types_are_invalid():
    assert_invalid(refused(b"", "image/png"), "image", "empty")
    assert_invalid(refused(png_bytes(gradient()), "image/gif"), "image", "image/gif", "image/png")
    assert_invalid(refused(png_bytes(gradient()), ""), "image", "missing")


def test_media_type_parameters_and_case_are_ignored():
    assert decode(png_bytes(gradient()), "Image/PNG; charset=binary").width == 40


@pytest.mark.parametrize("data_kind, media_type", [("png", "image/jpeg"), ("jpeg", DICOM), ("dicom", "image/png"),
                                                   ("png", DICOM)])
def test_a_media_type_that_disagrees_with_the_bytes_is_invalid(data_kind, media_type):
    data = {"png": lambda: png_bytes(gradient()), "jpeg": lambda: jpeg_bytes(gradient()),
            "dicom": lambda: pydicom_example("CT_small.dcm")}[data_kind]()
    assert_invalid(refused(data, media_type), "image", media_type, data_kind.upper())


@pytest.mark.parametrize("media_type", ["image/png", "image/jpeg"])
def test_random_bytes_are_invalid(media_type):
    noise = b"\x00" + np.random.default_rng(3).bytes(2048)  # cannot start with a signature
    assert_invalid(refused(noise, media_type), "image", "not a")


def test_truncated_png_and_jpeg_are_invalid():
    png = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    assert_invalid(refused(png[: len(png) // 2], "image/png"), "image", "PNG")
    assert_invalid(refused(png[:20], "image/png"), "image", "PNG")  # IHDR cut short
    jpeg = jpeg_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    assert_invalid(refused(jpeg[: len(jpeg) // 2], "image/jpeg"), "image", "JPEG")


def test_bad_hint_and_frame_of_a_single_frame_image_are_invalid():
    assert_invalid(refused(png_bytes(gradient()), "image/png", modality="mri"), "image.modality", "mri")
    assert_invalid(refused(png_bytes(gradient()), "image/png", frame=1), "image.frame", "single frame")


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about every damaged element it meets
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["png16", "jpeg", "dicom"]), cut=st.integers(0, 10_000),
       flips=st.lists(st.tuples(st.integers(0, 40_000), st.integers(1, 255)), max_size=6))
def test_damaged_files_give_a_result_or_a_service_error_never_a_library_exception(kind, cut, flips):
    base = {"png16": _FUZZ_PNG16, "jpeg": _FUZZ_JPEG, "dicom": _FUZZ_DICOM}[kind]
    data = bytearray(base[: max(1, len(base) - cut)])
    for offset, xor in flips:
        data[offset % len(data)] ^= xor
    media_type = {"png16": "image/png", "jpeg": "image/jpeg", "dicom": DICOM}[kind]
    try:
        decoded = decode(bytes(data), media_type, max_pixels=1_000_000)
    except ServiceError as error:
        assert error.code in (ErrorCode.INVALID_ARGUMENT, ErrorCode.PAYLOAD_TOO_LARGE)
    else:
        assert decoded.display.dtype == np.uint8 and decoded.display.shape == decoded.pixels.shape


_FUZZ_PNG16 = png_bytes((np.arange(32 * 24).reshape(32, 24) * 7).astype(np.uint16))
_FUZZ_JPEG = jpeg_bytes(gradient(32, 24))
_FUZZ_DICOM = pydicom_example("CT_small.dcm")
