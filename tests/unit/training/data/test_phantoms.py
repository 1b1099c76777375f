"""Synthetic phantoms: determinism, intensities, anatomy conventions, lesions and the COCO dataset writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from training.data.anatomy import (
    FINDING_BY_NAME,
    FINDING_TYPES,
    ORGAN_BY_NAME,
    findings_for,
    organ_names_json,
    organs_for,
)
from training.data.phantoms import (
    CT_PNG_OFFSET,
    PhantomCase,
    generate_case,
    lesion_polygon,
    write_phantom_dataset,
)

CASES_PER_MODALITY = 40


@pytest.fixture(scope="module")
def cases() -> dict[str, list[PhantomCase]]:
    return {m: [generate_case(m, 7, i) for i in range(CASES_PER_MODALITY)] for m in ("ct", "cxr")}


def _organ(case: PhantomCase, name: str) -> np.ndarray:
    return case.organ_mask == ORGAN_BY_NAME[name].label


def _centroid_x(mask: np.ndarray) -> float:
    return float(np.nonzero(mask)[1].mean())


def _polygon_area(flat: list[float]) -> float:
    xy = np.asarray(flat).reshape(-1, 2)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


@pytest.mark.parametrize("modality", ["ct", "cxr"])
def test_same_seed_and_index_give_identical_cases_and_other_indices_differ(modality):
    first, again, other = generate_case(modality, 3, 5), generate_case(modality, 3, 5), generate_case(modality, 3, 6)
    assert np.array_equal(first.image, again.image)
    assert np.array_equal(first.organ_mask, again.organ_mask)
    assert [(l.label, l.box_px) for l in first.lesions] == [(l.label, l.box_px) for l in again.lesions]
    assert first.image.shape != other.image.shape or not np.array_equal(first.image, other.image)
    assert not np.array_equal(generate_case(modality, 4, 5).organ_mask, first.organ_mask)


def test_unknown_modality_is_rejected():
    with pytest.raises(ValueError):
        generate_case("mr", 0, 0)


def test_ct_is_int16_hounsfield_with_plausible_tissue_values(cases):
    for case in cases["ct"]:
        assert case.image.dtype == np.int16 and case.image.shape == (256, 256)
        assert case.organ_mask.dtype == np.uint8 and case.organ_mask.shape == case.image.shape
        assert case.view == "axial"
        assert 1.2 <= case.pixel_spacing_mm[0] == case.pixel_spacing_mm[1] <= 1.7
        assert case.image.min() >= -1024 and case.image.max() <= 3071
        assert case.image[:8, :8].mean() < -950  # air outside the body
        lesion_px = np.zeros(case.image.shape, dtype=bool)
        for lesion in case.lesions:
            lesion_px |= lesion.mask
        expected = {"liver": (45, 80), "spleen": (35, 70), "aorta": (150, 280), "vertebra": (400, 1300)}
        for name, (lo, hi) in expected.items():
            region = _organ(case, name) & ~lesion_px
            if region.sum() > 50:
                assert lo <= case.image[region].mean() <= hi, name
        for name in ("right kidney", "left kidney"):
            region = _organ(case, name) & ~lesion_px
            if region.sum() > 50:
                assert case.image[region].mean() > 90


def test_cxr_is_uint8_non_square_with_dark_lungs_and_dense_heart(cases):
    widths = set()
    for case in cases["cxr"]:
        h, w = case.image.shape
        widths.add(w)
        assert case.image.dtype == np.uint8 and h == 320 and 256 <= w <= 288
        assert case.view == "PA" and 1.2 <= case.pixel_spacing_mm[0] <= 1.5
        lungs = _organ(case, "right lung") | _organ(case, "left lung")
        assert case.image[lungs].mean() + 60 < case.image[_organ(case, "heart")].mean()
        assert case.image[lungs].mean() + 60 < case.image[_organ(case, "mediastinum")].mean()
    assert len(widths) > 5


@pytest.mark.parametrize("modality", ["ct", "cxr"])
def test_organ_labels_come_only_from_the_modality(cases, modality):
    allowed = {0} | {o.label for o in organs_for(modality)}
    seen = set()
    for case in cases[modality]:
        labels = set(np.unique(case.organ_mask).tolist())
        assert labels <= allowed
        seen |= labels
    assert seen == allowed  # every organ shows up somewhere


def test_ct_follows_radiological_convention_and_slice_level_varies(cases):
    without_kidneys = 0
    for case in cases["ct"]:
        liver, spleen = _organ(case, "liver"), _organ(case, "spleen")
        if liver.sum() > 100 and spleen.sum() > 100:
            assert _centroid_x(liver) < _centroid_x(spleen)
        right, left = _organ(case, "right kidney"), _organ(case, "left kidney")
        if right.any() and left.any():
            assert _centroid_x(right) < _centroid_x(left)
        without_kidneys += not (right.any() or left.any())
        aorta, vertebra = _organ(case, "aorta"), _organ(case, "vertebra")
        assert np.nonzero(aorta)[0].mean() < np.nonzero(vertebra)[0].mean()  # anterior = up
        assert _centroid_x(aorta) > _centroid_x(vertebra)  # patient left of the spine
        diameter_mm = 2 * np.sqrt(aorta.sum() / np.pi) * case.pixel_spacing_mm[0]
        assert 17 <= diameter_mm <= 27
    assert 0 < without_kidneys < len(cases["ct"])


def test_cxr_follows_radiological_convention(cases):
    for case in cases["cxr"]:
        assert _centroid_x(_organ(case, "right lung")) < _centroid_x(_organ(case, "left lung"))
        assert _centroid_x(_organ(case, "heart")) > case.image.shape[1] / 2
        diaphragm = _organ(case, "diaphragm")
        lungs_bottom = np.nonzero(_organ(case, "right lung") | _organ(case, "left lung"))[0].mean()
        assert np.nonzero(diaphragm)[0].mean() > lungs_bottom
        thickness = diaphragm.sum() / np.count_nonzero(diaphragm.any(axis=0))
        assert 0.03 * 320 <= thickness <= 0.07 * 320


@pytest.mark.parametrize("modality", ["ct", "cxr"])
def test_lesions_are_plausible_tight_and_inside_their_host(cases, modality):
    names = {f.name for f in findings_for(modality)}
    counts = []
    for case in cases[modality]:
        counts.append(len(case.lesions))
        for lesion in case.lesions:
            assert lesion.label in names
            assert lesion.host_organ in FINDING_BY_NAME[lesion.label].hosts
            assert lesion.mask.dtype == bool and lesion.mask.shape == case.image.shape
            rows, cols = np.nonzero(lesion.mask)
            assert lesion.box_px == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            inside = (lesion.mask & _organ(case, lesion.host_organ)).sum() / lesion.mask.sum()
            assert inside >= 0.8
            assert lesion.size_mm > 0
            if lesion.label == "pleural effusion":
                host_rows = np.nonzero(_organ(case, lesion.host_organ))[0]
                assert rows.mean() > (host_rows.min() + host_rows.max()) / 2
    assert 0 < counts.count(0) < len(counts) / 2
    assert max(counts) <= 3


def test_lesion_sizes_span_small_to_large_and_lesions_are_visible(cases):
    sizes = [l.size_mm for m in ("ct", "cxr") for c in cases[m] for l in c.lesions]
    assert min(sizes) < 10 and max(sizes) > 30
    for case in cases["ct"]:
        for lesion in case.lesions:
            ring = np.zeros_like(lesion.mask)
            x1, y1, x2, y2 = lesion.box_px
            ring[max(0, y1 - 4):y2 + 4, max(0, x1 - 4):x2 + 4] = True
            surround = ring & ~lesion.mask & _organ(case, lesion.host_organ)
            if surround.sum() > 20 and lesion.mask.sum() > 20:
                contrast = abs(case.image[lesion.mask].mean() - case.image[surround].mean())
                assert contrast > 15, lesion.label


def test_lesion_polygon_runs_along_pixel_edges():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:6, 3:7] = True
    xy = np.asarray(lesion_polygon(mask)).reshape(-1, 2)
    assert xy[:, 0].min() == 3 and xy[:, 0].max() == 7 and xy[:, 1].min() == 2 and xy[:, 1].max() == 6
    assert abs(_polygon_area(xy.ravel().tolist()) - 16) < 1


def test_write_phantom_dataset_writes_a_consistent_coco_dataset(tmp_path):
    path = write_phantom_dataset(tmp_path, ["ct", "cxr"], count=3, seed=11, workers=2, progress=False)
    assert path == tmp_path / "annotations.json"
    coco = json.loads(path.read_text())
    assert json.loads((tmp_path / "organs.json").read_text()) == organ_names_json()
    assert coco["info"]["seed"] == 11
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(i + 1, f.name) for i, f in enumerate(FINDING_TYPES)]
    assert [im["file_name"] for im in coco["images"]] == [f"images/{m}_{i:05d}.png" for m in ("ct", "cxr")
                                                          for i in range(3)]
    assert len({im["id"] for im in coco["images"]}) == 6
    category_names = {c["id"]: c["name"] for c in coco["categories"]}
    images = {im["id"]: im for im in coco["images"]}
    for im in coco["images"]:
        modality = im["file_name"].split("/")[1].split("_")[0]
        case = generate_case(modality, 11, int(im["file_name"][-9:-4]))
        assert im["modality"] == modality.upper() and im["view"] == case.view
        assert im["pixel_spacing"] == list(case.pixel_spacing_mm)
        with Image.open(tmp_path / im["file_name"]) as png:
            assert png.size == (im["width"], im["height"])
            assert png.mode == ("I;16" if modality == "ct" else "L")
            pixels = np.array(png)
        if modality == "ct":
            assert np.array_equal(pixels.astype(np.int32) - CT_PNG_OFFSET, case.image)
        else:
            assert np.array_equal(pixels, case.image)
        with Image.open(tmp_path / "masks" / im["file_name"].split("/")[1]) as png:
            assert png.mode == "L" and png.size == (im["width"], im["height"])
            assert np.array_equal(np.array(png), case.organ_mask)
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    for ann in coco["annotations"]:
        im = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x + w <= im["width"] and y + h <= im["height"]
        assert 0 < ann["area"] <= w * h and ann["iscrowd"] == 0
        assert ann["host_organ"] in FINDING_BY_NAME[category_names[ann["category_id"]]].hosts
        (polygon,) = ann["segmentation"]
        xy = np.asarray(polygon).reshape(-1, 2)
        assert len(xy) >= 3
        assert np.allclose([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()], [x, y, x + w, y + h])
        assert 0.5 * ann["area"] <= _polygon_area(polygon) <= ann["area"] + 1
