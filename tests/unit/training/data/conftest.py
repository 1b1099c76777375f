"""Small fixture datasets in each supported format, written by the tests themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.files import write_png


@pytest.fixture
def coco_dataset(tmp_path: Path) -> Path:
    """Two CT images (one with a cyst in the liver, one without lesions) with organ masks."""
    root = tmp_path / "coco"
    hu = np.full((64, 80), -1000, np.int16)
    hu[8:56, 8:72] = 40
    mask = np.zeros((64, 80), np.uint8)
    mask[10:40, 8:40] = 1  # liver on image left (patient right)
    mask[10:30, 50:70] = 2  # spleen
    for name in ("a.png", "b.png"):
        write_png(root / "images" / name, (hu + 1024).astype(np.uint16))
        write_png(root / "masks" / name, mask)
    (root / "organs.json").write_text(json.dumps({"1": "liver", "2": "spleen"}))
    coco = {
        "images": [
            {"id": 1, "file_name": "images/a.png", "width": 80, "height": 64, "modality": "CT",
             "pixel_spacing": [0.8, 0.8]},
            {"id": 2, "file_name": "images/b.png", "width": 80, "height": 64, "modality": "CT",
             "pixel_spacing": [0.8, 0.8]},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [15, 15, 10, 8], "area": 80, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "hypodense cyst"}],
    }
    (root / "annotations.json").write_text(json.dumps(coco))
    return root
