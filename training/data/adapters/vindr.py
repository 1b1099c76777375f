"""VinDr-CXR annotation CSV: ``image_id, rad_id, class_name, class_id, x_min, y_min, x_max, y_max``.

Several radiologists annotate each image; boxes of the same class overlapping by IoU ≥ 0.5 are the same
finding and kept once. "No finding" rows give images without lesions (true negatives).
"""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

from training.data.boxes import box_iou
from training.data.cases import DetectionCase, LesionBox
from training.data.errors import DataError, ErrorPolicy

CLASS_TO_FINDING = {"nodule/mass": "nodule", "consolidation": "consolidation", "pleural effusion": "pleural effusion"}
REQUIRED = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")
IMAGE_SUFFIXES = (".dicom", ".dcm", ".png")


def _image_geometry(path: Path, pixel_spacing_mm: tuple[float, float] | None) -> tuple[int, int, tuple[float, float]]:
    """Width, height and spacing from the file header, without decoding pixels."""
    if path.suffix == ".png":
        with Image.open(path) as img:
            width, height = img.size
        if pixel_spacing_mm is None:
            raise ValueError(f"{path.name} is a PNG without pixel spacing; pass --pixel-spacing")
        return width, height, pixel_spacing_mm
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    spacing = getattr(ds, "PixelSpacing", None) or getattr(ds, "ImagerPixelSpacing", None) or pixel_spacing_mm
    if spacing is None:
        raise ValueError(f"{path.name} has neither PixelSpacing nor ImagerPixelSpacing")
    return int(ds.Columns), int(ds.Rows), (float(spacing[0]), float(spacing[1]))


def load_vindr(csv_path: Path, images_dir: Path, pixel_spacing_mm: tuple[float, float] | None = None,
               policy: ErrorPolicy | None = None) -> list[DetectionCase]:
    """Read a VinDr-CXR annotation CSV into one case per image."""
    policy = policy or ErrorPolicy()
    rows_by_image: dict[str, list[tuple[int, dict]]] = {}
    try:
        with csv_path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"missing columns {missing}", file=str(csv_path))
            for row_number, row in enumerate(reader, start=2):
                rows_by_image.setdefault(row["image_id"].strip(), []).append((row_number, row))
    except FileNotFoundError:
        raise DataError("CSV file not found", file=str(csv_path)) from None

    cases = []
    for image_id, rows in rows_by_image.items():
        path = next((images_dir / f"{image_id}{s}" for s in IMAGE_SUFFIXES
                     if (images_dir / f"{image_id}{s}").exists()), None)
        if path is None:
            policy.handle(DataError(f"no image {image_id}.dicom/.dcm/.png in {images_dir}", file=str(csv_path),
                                    row=rows[0][0]))
            continue
        try:
            width, height, spacing = _image_geometry(path, pixel_spacing_mm)
        except Exception as exc:  # unreadable header of any kind
            policy.handle(DataError(f"unreadable image header ({exc})", file=str(path)))
            continue
        lesions: list[LesionBox] = []
        bad = False
        for row_number, row in rows:
            name = row["class_name"].strip().lower()
            if name == "no finding":
                continue
            try:
                box = tuple(float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
                probe = DetectionCase(case_id=image_id, image_path=path, modality="cxr", width=width,
                                      height=height, pixel_spacing_mm=spacing,
                                      lesions=[LesionBox(label=name, box_px=box)])
            except (ValueError, DataError) as exc:
                policy.handle(DataError(f"bad box ({exc})", file=str(csv_path), row=row_number))
                bad = True
                break
            lesion = probe.lesions[0]
            lesion.label = CLASS_TO_FINDING.get(name, name)
            if not any(o.label == lesion.label and box_iou(o.box_px, lesion.box_px) >= 0.5 for o in lesions):
                lesions.append(lesion)
        if bad:
            continue
        cases.append(DetectionCase(case_id=image_id, image_path=path, modality="cxr", width=width, height=height,
                                   pixel_spacing_mm=spacing, lesions=lesions, view="PA", source="vindr"))
    return cases
