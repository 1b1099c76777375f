"""What the question and rationale writers know about one image after linking."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.data.boxes import BoxNorm, BoxPx
from training.data.linking import Position

SMALL_MM, LARGE_MM = 10.0, 30.0  # size categories: small < 10 mm ≤ medium ≤ 30 mm < large


def size_category(size_mm: float) -> str:
    """Size word for a longest diameter in mm."""
    if size_mm < SMALL_MM:
        return "small"
    return "large" if size_mm > LARGE_MM else "medium"


@dataclass(frozen=True)
class LinkedFinding:
    """A lesion after linking: its category, host organ, boxes, size and position words."""

    label: str
    organ: str | None  # None: outside the segmented organs
    overlap: float | None  # None when the organ is the dataset's own hint rather than a mask overlap
    box_px: BoxPx
    box: BoxNorm
    size_mm: float
    position: Position

    @property
    def size_category(self) -> str:
        return size_category(self.size_mm)


@dataclass
class CaseContext:
    """One image's facts: modality, view, visible organs and linked findings."""

    case_id: str
    modality: str
    view: str
    width: int
    height: int
    findings: list[LinkedFinding] = field(default_factory=list)
    visible_organs: list[str] = field(default_factory=list)  # organs seen in the organ mask
