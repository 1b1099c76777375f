"""Phantom (or COCO-style on-disk) cases for the segmenter, the global→class label map and the split."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from service.imaging.windowing import PNG_HU_OFFSET
from training.data.anatomy import organs_for
from training.segmenter.errors import SegmenterError

_MODALITY_NAMES = {"ct": "CT", "cxr": "CXR"}


@dataclass(frozen=True)
class SegmentationCase:
    """One image in raw units with its organ mask in segmenter class indices."""

    name: str  # basename of the image file, e.g. ct_00012.png; also the split key
    image: np.ndarray  # CT: int16 HU; CXR: uint8
    classes: np.ndarray  # uint8, 0 = background, i+1 = i-th organ of organs_for(modality)
    pixel_spacing_mm: tuple[float, float]


def class_lookup(modality: str) -> np.ndarray:
    """A 256-entry table mapping global mask labels to this modality's class indices (others → 0)."""
    table = np.zeros(256, dtype=np.uint8)
    for index, organ in enumerate(organs_for(modality), start=1):
        table[organ.label] = index
    return table


def global_lookup(modality: str) -> np.ndarray:
    """The inverse of :func:`class_lookup`: class index → global label."""
    return np.array([0] + [o.label for o in organs_for(modality)], dtype=np.uint8)


def is_test_image(name: str, test_percent: int) -> bool:
    """Deterministic held-out split by image: a hash of the file's basename, independent of order and count."""
    digest = hashlib.sha1(Path(name).name.encode()).hexdigest()
    return int(digest[:8], 16) % 100 < test_percent


def split_cases(cases: list[SegmentationCase],
                test_percent: int) -> tuple[list[SegmentationCase], list[SegmentationCase]]:
    """(train, test) by :func:`is_test_image`."""
    train = [c for c in cases if not is_test_image(c.name, test_percent)]
    test = [c for c in cases if is_test_image(c.name, test_percent)]
    if not train or not test:
        raise SegmenterError(f"split of {len(cases)} cases left an empty train or test set; use more cases")
    return train, test


def load_dataset_dir(data_dir: Path, modality: str, progress: bool = True) -> list[SegmentationCase]:
    """Read a COCO-style phantom dataset (annotations.json, images/, masks/) for one modality.

    ``data_dir`` may be the dataset folder or its annotations.json (what write_phantom_dataset returns).
    """
    data_dir = Path(data_dir)
    if data_dir.name == "annotations.json":
        data_dir = data_dir.parent
    ann_path = data_dir / "annotations.json"
    if not ann_path.is_file():
        raise SegmenterError(f"dataset {data_dir} has no annotations.json")
    try:
        annotations = json.loads(ann_path.read_text())
    except json.JSONDecodeError as exc:
        raise SegmenterError(f"{ann_path} is not valid JSON: {exc}") from exc
    wanted = _MODALITY_NAMES[modality] if modality in _MODALITY_NAMES else None
    if wanted is None:
        organs_for(modality)  # raises the standard unknown-modality error
    lookup = class_lookup(modality)
    entries = [e for e in annotations.get("images", []) if str(e.get("modality", "")).upper() == wanted]
    cases = []
    for entry in tqdm(entries, desc=f"load {modality}", disable=not progress):
        image_path = data_dir / entry["file_name"]
        mask_path = data_dir / "masks" / Path(entry["file_name"]).name
        if not mask_path.is_file():
            raise SegmenterError(f"mask {mask_path} is missing for {image_path}")
        image = np.asarray(Image.open(image_path))
        if modality == "ct":  # 16-bit PNG stores HU + 1024
            image = (image.astype(np.int32) - PNG_HU_OFFSET).astype(np.int16)
        else:
            image = image.astype(np.uint8)
        masks = np.asarray(Image.open(mask_path)).astype(np.uint8)
        spacing = tuple(float(s) for s in entry.get("pixel_spacing", (1.0, 1.0)))
        cases.append(SegmentationCase(Path(entry["file_name"]).name, image, lookup[masks], spacing))
    if not cases:
        raise SegmenterError(f"dataset {data_dir} holds no {modality} images")
    return cases


def generate_cases(modality: str, count: int, seed: int, progress: bool = True) -> list[SegmentationCase]:
    """Generate phantoms in memory, named like the on-disk dataset so the split is the same either way."""
    from training.data.phantoms import generate_case  # imported late: the phantom generator is optional here

    lookup = class_lookup(modality)
    cases = []
    for index in tqdm(range(count), desc=f"phantoms {modality}", disable=not progress):
        case = generate_case(modality, seed, index)
        cases.append(SegmentationCase(f"{modality}_{index:05d}.png", np.asarray(case.image),
                                      lookup[np.asarray(case.organ_mask)],
                                      tuple(float(s) for s in case.pixel_spacing_mm)))
    return cases


def load_cases(modality: str, data_dir: Path | None, count: int, seed: int,
               progress: bool = True) -> list[SegmentationCase]:
    """Cases from ``data_dir`` when given, else freshly generated phantoms."""
    if data_dir is not None:
        return load_dataset_dir(data_dir, modality, progress)
    return generate_cases(modality, count, seed, progress)
