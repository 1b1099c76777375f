"""Generic COCO detection JSON (plus optional organ masks), the format our phantoms are written in.

Beyond plain COCO, each image entry may carry ``modality`` ("CT" / "CXR"), ``pixel_spacing`` [row, col] and
``view``; annotations may carry ``size_mm`` and ``host_organ``. Organ masks, when present, are PNGs with the
image's file name in a mask folder, and ``organs.json`` maps their labels to organ names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from training.data.anatomy import ORGAN_BY_NAME
from training.data.cases import DetectionCase, LesionBox
from training.data.errors import DataError, ErrorPolicy

MODALITY_ALIASES = {"ct": "ct", "cxr": "cxr", "cr": "cxr", "dx": "cxr", "xr": "cxr", "x-ray": "cxr"}


def load_organ_names(path: Path) -> dict[int, str]:
    """Read ``organs.json`` (label → organ name); every name must be an organ the project knows."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError("organs.json not found", file=str(path)) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc})", file=str(path)) from None
    names: dict[int, str] = {}
    for key, name in raw.items():
        try:
            label = int(key)
        except ValueError:
            raise DataError(f"label {key!r} is not an integer", file=str(path)) from None
        if name not in ORGAN_BY_NAME:
            raise DataError(f"unknown organ name {name!r} for label {label}", file=str(path))
        names[label] = name
    return names


def _polygon_mask(segmentation: object, width: int, height: int) -> np.ndarray | None:
    """Rasterise COCO polygon segmentation; None for RLE or missing segmentation (the box is used instead)."""
    if not isinstance(segmentation, list) or not segmentation:
        return None
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in segmentation:
        if isinstance(polygon, list) and len(polygon) >= 6:
            draw.polygon([float(v) for v in polygon], fill=1, outline=1)
    mask = np.asarray(canvas, dtype=bool)
    return mask if mask.any() else None


def load_coco(
    annotations: Path,
    images_dir: Path | None = None,
    masks_dir: Path | None = None,
    default_modality: str | None = None,
    policy: ErrorPolicy | None = None,
) -> list[DetectionCase]:
    """Read a COCO detection JSON into cases.

    Image paths are resolved against ``images_dir`` (default: the JSON's folder). ``masks_dir`` holds organ
    masks named like the images. Images whose modality is neither in the JSON nor ``default_modality`` are
    rejected, since guessing it from the file path is how the reference code mislabels scans.
    """
    policy = policy or ErrorPolicy()
    try:
        data = json.loads(annotations.read_text())
    except FileNotFoundError:
        raise DataError("annotation file not found", file=str(annotations)) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc})", file=str(annotations)) from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"missing COCO list {key!r}", file=str(annotations))
    root = images_dir or annotations.parent
    categories = {c["id"]: c["name"] for c in data["categories"]}
    by_image: dict[int, list[dict]] = {}
    for index, ann in enumerate(data["annotations"]):
        by_image.setdefault(ann.get("image_id"), []).append({**ann, "_row": index})

    cases = []
    for row, image in enumerate(data["images"]):
        try:
            cases.append(_coco_case(image, row, by_image.get(image.get("id"), []), categories, root, masks_dir,
                                    default_modality, annotations))
        except DataError as exc:
            policy.handle(exc)
    return cases


def _coco_case(image: dict, row: int, anns: list[dict], categories: dict, root: Path, masks_dir: Path | None,
               default_modality: str | None, source: Path) -> DetectionCase:
    where = f"{source}"
    try:
        file_name = str(image["file_name"])
        width, height = int(image["width"]), int(image["height"])
    except (KeyError, TypeError, ValueError):
        raise DataError("image entry needs file_name, width and height", file=where, row=f"images[{row}]") from None
    modality = MODALITY_ALIASES.get(str(image.get("modality") or default_modality or "").lower())
    if modality is None:
        raise DataError(f"image {file_name!r} has no known modality (use --modality)", file=where,
                        row=f"images[{row}]")
    spacing = image.get("pixel_spacing") or [1.0, 1.0]
    lesions = []
    for ann in anns:
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
            label = categories[ann["category_id"]]
        except (KeyError, TypeError, ValueError):
            raise DataError("annotation needs a bbox [x, y, w, h] and a known category_id", file=where,
                            row=f"annotations[{ann['_row']}]") from None
        lesions.append(LesionBox(
            label=label, box_px=(x, y, x + w, y + h), size_mm=ann.get("size_mm"),
            mask=_polygon_mask(ann.get("segmentation"), width, height), organ_hint=ann.get("host_organ"),
        ))
    mask_path = None
    if masks_dir is not None:
        mask_path = masks_dir / Path(file_name).name
        if not mask_path.exists():
            raise DataError(f"organ mask {mask_path} not found", file=where, row=f"images[{row}]")
    try:
        return DetectionCase(
            case_id=Path(file_name).stem, image_path=root / file_name, modality=modality, width=width,
            height=height, pixel_spacing_mm=(float(spacing[0]), float(spacing[1])), lesions=lesions,
            organ_mask_path=mask_path, view=str(image.get("view", "")), source="coco",
        )
    except DataError as exc:
        raise DataError(str(exc), file=where, row=f"images[{row}]") from None
