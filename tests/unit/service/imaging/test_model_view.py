"""model_view_image gives the model exactly what training gave it; boxes map back by scaling alone."""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from service.core.types import ImageInput
from service.imaging.decode import decode_image
from service.imaging.model_view import box_norm_to_px, box_px_to_norm, model_view_image
from service.imaging.windowing import PNG_HU_OFFSET
from training.data.boxes import denormalize_box, normalize_box
from training.data.drawing import load_model_image
from training.data.phantoms import generate_case, write_phantom_dataset


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory):
    """One CT (16-bit PNG, HU + 1024) and one CXR (8-bit PNG) phantom, written by the data engine."""
    root = tmp_path_factory.mktemp("phantoms")
    annotations = json.loads(write_phantom_dataset(root, ["ct", "cxr"], count=1, seed=3, workers=1,
                                                   progress=False).read_text())
    return root, annotations["images"]


def test_model_view_matches_training_pixel_for_pixel(phantom_dataset):
    root, images = phantom_dataset
    assert sorted(image["modality"] for image in images) == ["CT", "CXR"]
    for image in images:
        path = root / image["file_name"]
        modality = image["modality"].lower()

        decoded = decode_image(ImageInput(data=path.read_bytes(), media_type="image/png"), 50_000_000)
        served = model_view_image(decoded)
        trained = load_model_image(path, modality)

        assert decoded.modality == modality  # inferred from the bit depth alone, no hint given
        assert served.mode == trained.mode == "RGB"
        assert served.size == trained.size == (image["width"], image["height"])
        np.testing.assert_array_equal(np.asarray(served), np.asarray(trained))


def ct_phantom_as_dicom(hu: np.ndarray, spacing: tuple[float, float]) -> bytes:
    """A CT DICOM storing the phantom's HU with the usual 1024 offset in RescaleIntercept."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = -PNG_HU_OFFSET, 1
    ds.WindowCenter, ds.WindowWidth = 600, 1500  # a lung-ish window the service must NOT use for the model
    ds.PixelSpacing = [f"{v:.4f}" for v in spacing]
    ds.PixelData = (hu.astype(np.int32) + PNG_HU_OFFSET).astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_ct_dicom_reaches_the_model_exactly_as_the_training_png(phantom_dataset):
    root, images = phantom_dataset
    (ct,) = [image for image in images if image["modality"] == "CT"]
    case = generate_case("ct", 3, 0)  # the same case write_phantom_dataset wrote
    png_view = load_model_image(root / ct["file_name"], "ct")

    decoded = decode_image(ImageInput(data=ct_phantom_as_dicom(case.image, case.pixel_spacing_mm),
                                      media_type="application/dicom"), 50_000_000)

    np.testing.assert_array_equal(np.asarray(model_view_image(decoded)), np.asarray(png_view))
    np.testing.assert_array_equal(decoded.pixels, case.image.astype(np.float32))
    assert decoded.pixel_spacing_mm == pytest.approx(case.pixel_spacing_mm, abs=1e-4)
    assert isinstance(decoded.dicom, pydicom.Dataset)


def test_boxes_map_by_scaling_only_on_a_non_square_image():
    width, height = 263, 320  # a CXR phantom's shape: stretched, never letterboxed

    assert box_norm_to_px((500, 250, 750, 1000 - 1), width, height) == pytest.approx(
        (131.5, 80.0, 197.25, 319.68))
    assert box_px_to_norm((0, 0, width, height), width, height) == (0, 0, 999, 999)  # [0, 1000)


def test_box_helpers_are_the_training_box_contract():
    rng = np.random.default_rng(5)
    for _ in range(200):
        width, height = (int(v) for v in rng.integers(16, 4096, 2))
        x1, x2 = sorted(rng.uniform(0, width, 2))
        y1, y2 = sorted(rng.uniform(0, height, 2))
        norm = box_px_to_norm((x1, y1, x2, y2), width, height)
        assert norm == normalize_box((x1, y1, x2, y2), width, height)
        back = box_norm_to_px(norm, width, height)
        assert back == denormalize_box(norm, width, height)
        # A round trip moves an edge by at most half a normalised step (plus the [0, 1000) clamp at the far edge).
        step_x, step_y = width / 1000, height / 1000
        assert abs(back[0] - x1) <= step_x / 2 + 1e-9 and abs(back[1] - y1) <= step_y / 2 + 1e-9
        assert abs(back[2] - x2) <= step_x + 1e-9 and abs(back[3] - y2) <= step_y + 1e-9
