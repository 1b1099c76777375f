"""DeepLesion (NIH) ``DL_info.csv``: one row per lesion on a key CT slice.

Slices live at ``Images_png/<patient>_<study>_<series>/<slice>.png`` as 16-bit PNG of HU + 32768. The
coarse lesion type gives an organ hint for liver and kidney lesions; other types (lung, bone, soft tissue…)
are regions our CT organ set does not segment.
"""

from __future__ import annotations

import csv
from pathlib import Path

from training.data.cases import DetectionCase, LesionBox
from training.data.errors import DataError, ErrorPolicy

DEEPLESION_HU_OFFSET = 32768
COARSE_TYPES = {1: "bone", 2: "abdomen", 3: "mediastinum", 4: "liver", 5: "lung", 6: "kidney",
                7: "soft tissue", 8: "pelvis"}
REQUIRED = ("File_name", "Bounding_boxes", "Spacing_mm_px_", "Image_size", "Coarse_lesion_type",
            "Lesion_diameters_Pixel_")


def _floats(text: str, count: int, column: str) -> list[float]:
    values = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    if len(values) < count:
        raise ValueError(f"{column} needs {count} numbers, got {text!r}")
    return values


def load_deeplesion(csv_path: Path, images_dir: Path, policy: ErrorPolicy | None = None) -> list[DetectionCase]:
    """Read ``DL_info.csv`` into one case per key slice (lesions on the same slice grouped)."""
    policy = policy or ErrorPolicy()
    try:
        handle = csv_path.open(newline="")
    except FileNotFoundError:
        raise DataError("CSV file not found", file=str(csv_path)) from None
    cases: dict[str, DetectionCase] = {}
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"missing columns {missing}", file=str(csv_path))
        for row_number, row in enumerate(reader, start=2):  # row 1 is the header
            try:
                _add_row(cases, row, images_dir)
            except (ValueError, KeyError) as exc:
                policy.handle(DataError(str(exc), file=str(csv_path), row=row_number))
    return list(cases.values())


def _add_row(cases: dict[str, DetectionCase], row: dict, images_dir: Path) -> None:
    name = row["File_name"].strip()
    stem, _, slice_file = name.rpartition("_")
    if not stem or not slice_file.endswith(".png"):
        raise ValueError(f"File_name {name!r} is not <patient>_<study>_<series>_<slice>.png")
    x1, y1, x2, y2 = _floats(row["Bounding_boxes"], 4, "Bounding_boxes")[:4]
    spacing = _floats(row["Spacing_mm_px_"], 2, "Spacing_mm_px_")
    width, height = (int(v) for v in _floats(row["Image_size"], 2, "Image_size")[:2])
    long_px = _floats(row["Lesion_diameters_Pixel_"], 1, "Lesion_diameters_Pixel_")[0]
    coarse = COARSE_TYPES.get(int(float(row["Coarse_lesion_type"] or -1)))
    if coarse == "kidney":
        hint = "right kidney" if (x1 + x2) / 2 < width / 2 else "left kidney"  # image left = patient right
    else:
        hint = "liver" if coarse == "liver" else None
    lesion = LesionBox(label=f"{coarse} lesion" if coarse else "lesion", box_px=(x1, y1, x2 + 1, y2 + 1),
                       size_mm=long_px * spacing[0], organ_hint=hint)
    case = cases.get(name)
    if case is None:
        case = DetectionCase(
            case_id=name.removesuffix(".png"), image_path=images_dir / stem / slice_file, modality="ct",
            width=width, height=height, pixel_spacing_mm=(spacing[1], spacing[0]), view="axial",
            source="deeplesion", hu_offset=DEEPLESION_HU_OFFSET,
        )
        cases[name] = case
    case.lesions.append(lesion)
    case.__post_init__()  # validates the new box against the image size
