"""The box text contract: ``<box>[x1, y1, x2, y2]</box>`` with integers in [0, 1000).

Coordinates are relative to the image the model saw; ``x2``/``y2`` are exclusive pixel edges before
normalisation. Both the data engine (writing targets) and the service (parsing model output) use this
module, so the format lives in one place.
"""

from __future__ import annotations

import re
from typing import Sequence

BOX_SCALE = 1000
BOX_PATTERN = re.compile(r"<box>\s*\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]\s*</box>")

BoxPx = tuple[float, float, float, float]
BoxNorm = tuple[int, int, int, int]


def validate_box_px(box: Sequence[float], width: int, height: int) -> BoxPx:
    """Return ``box`` as a float tuple if it is a non-empty box inside a ``width`` x ``height`` image.

    Raises ValueError naming what is wrong (inverted, zero-area, outside the image, not finite).
    """
    if len(box) != 4:
        raise ValueError(f"box must have 4 coordinates, got {len(box)}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(v == v and abs(v) != float("inf") for v in (x1, y1, x2, y2)):
        raise ValueError(f"box {list(box)} has a non-finite coordinate")
    if x2 < x1 or y2 < y1:
        raise ValueError(f"box {list(box)} is inverted (x2 < x1 or y2 < y1)")
    if x2 == x1 or y2 == y1:
        raise ValueError(f"box {list(box)} has zero area")
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise ValueError(f"box {list(box)} lies outside the {width}x{height} image")
    return (x1, y1, x2, y2)


def normalize_box(box_px: Sequence[float], width: int, height: int) -> BoxNorm:
    """Pixel box (x2/y2 exclusive) → integers in [0, 1000) relative to the image size."""

    def scale(value: float, size: int) -> int:
        return max(0, min(BOX_SCALE - 1, round(value * BOX_SCALE / size)))

    x1, y1, x2, y2 = box_px
    return (scale(x1, width), scale(y1, height), scale(x2, width), scale(y2, height))


def denormalize_box(box: Sequence[int], width: int, height: int) -> BoxPx:
    """Integers in [0, 1000) → pixel box in an image of ``width`` x ``height``."""
    x1, y1, x2, y2 = box
    return (x1 * width / BOX_SCALE, y1 * height / BOX_SCALE, x2 * width / BOX_SCALE, y2 * height / BOX_SCALE)


def format_box(box: Sequence[int]) -> str:
    """Normalised box → its text form."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return f"<box>[{x1}, {y1}, {x2}, {y2}]</box>"


def grid_value(value: int, cells: int) -> int:
    """The multiple of ``1000 / cells`` nearest ``value``, rounded to an integer and kept below 1000."""
    return min(BOX_SCALE - 1, round(round(value * cells / BOX_SCALE) * BOX_SCALE / cells))


def grid_values(cells: int) -> list[int]:
    """Every value :func:`grid_value` can return for a grid of ``cells`` lines per side, ascending."""
    return sorted({grid_value(round(k * BOX_SCALE / cells), cells) for k in range(cells + 1)})


def snap_box(box: Sequence[int], cells: int) -> BoxNorm:
    """``box`` with each coordinate moved to the nearest grid line; a box narrower than one cell keeps one."""
    x1, y1, x2, y2 = (grid_value(int(v), cells) for v in box)

    def neighbour(value: int, step: int) -> int:  # the grid value ``step`` lines from the grid value ``value``
        return grid_value(round((round(value * cells / BOX_SCALE) + step) * BOX_SCALE / cells), cells)

    def ordered(low: int, high: int) -> tuple[int, int]:  # a 1-px lesion must not collapse to a zero-area box
        if high > low:
            return low, high
        above = neighbour(low, 1)
        return (low, above) if above > low else (neighbour(low, -1), low)  # at the far edge, widen inwards

    (x1, x2), (y1, y2) = ordered(x1, x2), ordered(y1, y2)
    return (x1, y1, x2, y2)


def snap_boxes(text: str, cells: int) -> str:
    """``text`` with every well-formed box written on a grid of ``cells`` lines per side (:func:`snap_box`);
    malformed or out-of-range ones (:func:`is_valid_box`) stay as written.

    With ``cells`` = the model's input width, this drops only what the model cannot see (1000 units are
    7.8 per pixel at 128 px), and leaves ``cells + 1`` possible values per coordinate.
    """
    def snapped(match: re.Match) -> str:
        box = tuple(int(v) for v in match.groups())
        return format_box(snap_box(box, cells)) if is_valid_box(box) else match.group(0)

    return BOX_PATTERN.sub(snapped, text)


def is_valid_box(box: Sequence[int]) -> bool:
    """Every coordinate in [0, 1000) and x2 > x1, y2 > y1."""
    return all(0 <= v < BOX_SCALE for v in box) and box[2] > box[0] and box[3] > box[1]


def parse_boxes(text: str) -> list[BoxNorm]:
    """Every well-formed box in ``text``, in order; malformed or out-of-range ones are skipped."""
    boxes = []
    for match in BOX_PATTERN.finditer(text):
        values = tuple(int(v) for v in match.groups())
        if is_valid_box(values):
            boxes.append(values)
    return boxes


def centre_offset(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(dx, dy) from the centre of box ``b`` to the centre of box ``a``, in the boxes' units."""
    return (a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
