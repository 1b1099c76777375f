"""The grounding check: does each returned box lie in the organ the reasoning names?

The organ segmenter's label map of the same image is read inside each box (original pixels). The organ
covering most of the box's organ pixels is the segmented organ; background counts only when the box holds
no organ at all (a small lesion's box always has some margin around the organ).
"""

from __future__ import annotations

import numpy as np

from training.data.anatomy import ORGAN_BY_LABEL, ORGAN_BY_NAME

from service.core.types import Finding, GroundingCheck

BACKGROUND = "background"


def _box_slice(box_px: tuple[float, float, float, float], width: int, height: int) -> tuple[slice, slice]:
    x1, y1, x2, y2 = box_px
    left, top = int(np.clip(np.floor(x1), 0, width - 1)), int(np.clip(np.floor(y1), 0, height - 1))
    right, bottom = int(np.clip(np.ceil(x2), left + 1, width)), int(np.clip(np.ceil(y2), top + 1, height))
    return slice(top, bottom), slice(left, right)


def check_grounding(findings: list[Finding], labels: np.ndarray) -> list[GroundingCheck]:
    """One :class:`GroundingCheck` per finding against the (H, W) global organ label map."""
    height, width = labels.shape
    checks = []
    for index, finding in enumerate(findings):
        region = labels[_box_slice(finding.box_px, width, height)]
        counts = np.bincount(region.ravel(), minlength=max(ORGAN_BY_LABEL) + 1)
        total = max(1, region.size)
        organ_counts = counts.copy()
        organ_counts[0] = 0
        if organ_counts.sum() > 0:
            label = int(organ_counts.argmax())
            segmented, overlap = ORGAN_BY_LABEL[label].name, counts[label] / total
        else:
            segmented, overlap = BACKGROUND, counts[0] / total
        claimed = finding.organ
        claimed_label = ORGAN_BY_NAME[claimed].label if claimed in ORGAN_BY_NAME else None
        claimed_overlap = counts[claimed_label] / total if claimed_label is not None else 0.0
        checks.append(GroundingCheck(finding_index=index, claimed_organ=claimed, segmented_organ=segmented,
                                     overlap=round(float(overlap), 4), claimed_overlap=round(float(claimed_overlap), 4),
                                     consistent=bool(claimed) and claimed == segmented))
    return checks
