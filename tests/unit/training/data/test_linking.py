import numpy as np
import pytest

from training.data.boxes import box_iou
from training.data.linking import describe_position, link_lesion_to_organ

NAMES = {1: "liver", 2: "spleen", 3: "right kidney", 5: "aorta"}


def reference_bbox_iou_link(box, organ_mask, names):
    """The public reference code's rule: argmax IoU of the lesion box against each organ's bounding box."""
    best, best_iou = None, 0.0
    for label, name in names.items():
        rows, cols = np.nonzero(organ_mask == label)
        if rows.size:
            iou = box_iou(box, (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1))
            if iou > best_iou:
                best, best_iou = name, iou
    return best


def test_small_lesion_in_large_organ_goes_to_that_organ_not_to_a_grazing_small_organ():
    mask = np.zeros((200, 200), np.uint8)
    mask[20:180, 10:150] = 1  # large liver
    mask[100:112, 142:154] = 5  # small aorta overlapping the liver's right edge
    lesion = (136.0, 102.0, 144.0, 110.0)  # 8x8 px lesion, 3/4 of it inside the liver
    link = link_lesion_to_organ(lesion, mask, NAMES)
    assert link.organ == "liver"
    assert link.overlap == pytest.approx(0.75)
    assert link.fractions["aorta"] == pytest.approx(0.25)
    # The reference rule picks the small organ: its box IoU beats the huge liver box.
    assert reference_bbox_iou_link(lesion, mask, NAMES) == "aorta"


def test_lesion_outside_all_organs_has_no_host_but_keeps_its_best_overlap():
    mask = np.zeros((100, 100), np.uint8)
    mask[0:50, 0:50] = 1
    link = link_lesion_to_organ((45.0, 45.0, 65.0, 65.0), mask, NAMES)  # 25 of 400 px in the liver
    assert link.organ is None
    assert link.overlap == pytest.approx(25 / 400)
    far = link_lesion_to_organ((70.0, 70.0, 90.0, 90.0), mask, NAMES)
    assert far.organ is None and far.overlap == 0.0 and far.fractions == {}


def test_minimum_overlap_is_configurable_and_inclusive():
    mask = np.zeros((10, 10), np.uint8)
    mask[:, :3] = 2
    box = (0.0, 0.0, 10.0, 10.0)  # 30% spleen
    assert link_lesion_to_organ(box, mask, NAMES).organ == "spleen"
    assert link_lesion_to_organ(box, mask, NAMES, min_overlap=0.31).organ is None


def test_lesion_mask_is_used_instead_of_its_box():
    mask = np.zeros((20, 20), np.uint8)
    mask[:, :10] = 1
    mask[:, 10:] = 2
    lesion_mask = np.zeros((20, 20), bool)
    lesion_mask[5:15, 11:19] = True  # entirely in the spleen
    box = (0.0, 5.0, 19.0, 15.0)  # box mostly in the liver
    assert link_lesion_to_organ(box, mask, NAMES).organ == "liver"
    assert link_lesion_to_organ(box, mask, NAMES, lesion_mask=lesion_mask).organ == "spleen"


def test_unknown_organ_label_is_an_error_not_background():
    mask = np.full((10, 10), 9, np.uint8)
    with pytest.raises(ValueError, match="label 9"):
        link_lesion_to_organ((1.0, 1.0, 5.0, 5.0), mask, NAMES)


def test_position_words_follow_radiological_convention():
    organ = np.zeros((100, 100), bool)
    organ[20:80, 10:50] = True
    # Image left is the patient's right.
    right = describe_position((12.0, 22.0, 18.0, 28.0), "ct", 100, 100, organ)
    assert (right.side, right.level, right.depth) == ("right", "anterior", "peripheral")
    left = describe_position((70.0, 70.0, 80.0, 80.0), "cxr", 100, 100)
    assert (left.side, left.level) == ("left", "lower")
    centre = describe_position((27.0, 47.0, 33.0, 53.0), "cxr", 100, 100, organ, midline_x=50.0)
    assert centre.depth == "central" and centre.side == "right"
    assert describe_position((48.0, 10.0, 52.0, 14.0), "ct", 100, 100).side == "midline"
