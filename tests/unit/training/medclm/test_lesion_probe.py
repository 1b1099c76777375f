"""The lesion probe's box-head summary: the oracle-patch figures that bound grounding accuracy."""

import numpy as np

from training.medclm.lesion_probe import box_head_fit, digit_head_fit


def test_box_head_fit_counts_iou_thresholds_and_takes_the_median_error():
    fits = [(0.9, 0.01), (0.5, 0.02), (0.4, 0.05), (0.1, 0.30)]
    summary = box_head_fit(fits)
    assert summary["box_acc@0.5"] == 0.5  # 0.5 itself counts, as in the evaluation's IoU >= 0.5
    assert summary["box_acc@0.3"] == 0.75
    assert summary["box_median_centre_error"] == 0.035  # median of an even count: mean of the middle two


def test_box_head_fit_without_lesions_reports_nothing():
    assert box_head_fit([]) == {"box_acc@0.5": None, "box_acc@0.3": None, "box_median_centre_error": None}


def test_digit_head_fit_reports_the_digit_box_and_each_place_over_the_four_coordinates():
    hits = [np.array([[True, True], [True, False], [True, False], [False, False]]),
            np.array([[True, True], [True, True], [True, True], [True, False]])]
    summary = digit_head_fit([(0.6, 0.01), (0.2, 0.03)], hits)
    assert summary["digit_box_acc@0.5"] == 0.5 and summary["digit_box_median_centre_error"] == 0.02
    assert summary["digit_acc/100"] == 0.875  # (3/4 + 4/4) / 2
    assert summary["digit_acc/10"] == 0.5  # (1/4 + 3/4) / 2
