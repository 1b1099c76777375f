import math

import numpy as np

from training.segmenter.metrics import dice, hd95, summarise


def test_dice_values():
    a = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert math.isnan(dice(np.zeros_like(a), np.zeros_like(a)))


def test_hd95_of_a_shift_uses_spacing():
    a = np.zeros((40, 40), bool)
    a[10:20, 10:20] = True
    b = np.roll(a, 3, axis=1)
    assert hd95(a, b, (1.0, 1.0)) == 3.0
    assert hd95(a, b, (1.0, 0.5)) == 1.5
    assert hd95(a, np.zeros_like(a)) == math.inf


def test_summary_ignores_absent_organs():
    scores = summarise([[1.0, float("nan")], [0.8, 0.6]], [[0.0, 0.0], [2.0, 4.0]], ["a", "b"])
    assert scores["per_organ"]["a"]["dice"] == 0.9
    assert scores["per_organ"]["b"]["dice"] == 0.6 and scores["per_organ"]["b"]["images"] == 1
    assert math.isclose(scores["mean_dice"], 0.75)
