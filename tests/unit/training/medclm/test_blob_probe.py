"""The synthetic control task: a warmed-up, frozen tower is read by the language model."""

from __future__ import annotations

from training.medclm.blob_probe import SETTINGS, run_setting


def test_a_warmed_up_frozen_tower_is_read():
    frozen = next(s for s in SETTINGS if s.freeze_tower)
    result = run_setting(frozen, steps=60, progress=False)
    assert result["warmup_recall"] > 0.5  # the tower learnt to mark the square's patch
    # The answer is in the image only: with another image's pixels the loss must be far higher.
    assert result["reads_image"] and result["other"] > result["own"] + 0.1, result
