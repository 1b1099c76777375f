"""The LR schedule: per-stage restarts its warm-up and cosine when the language stages begin; single does not."""

from __future__ import annotations

import numpy as np
import pytest

from training.medclm.config import MedCLMConfig
from training.medclm.errors import MedCLMError
from training.medclm.trainer import lr_factor


def _factors(schedule: str, warmup: int = 300, total: int = 735) -> np.ndarray:
    config = MedCLMConfig(lr_schedule=schedule, lr=2e-3, min_lr=1e-5, lr_warmup_steps=100)
    factor = lr_factor(config, warmup, total)
    return np.array([factor(step) for step in range(total)])


def test_per_stage_schedule_restarts_after_the_vision_warm_up():
    f = _factors("per-stage")
    assert f[0] == pytest.approx(0.01) and f[99] == pytest.approx(1.0)  # linear ramp to the peak
    assert f[299] == pytest.approx(1e-5 / 2e-3, rel=0.05)  # the warm-up decays to the floor...
    assert f[300] == pytest.approx(0.01) and f[399] == pytest.approx(1.0)  # ...and the language stages ramp again
    assert np.all(np.diff(f[400:]) <= 1e-12) and f[-1] == pytest.approx(1e-5 / 2e-3, rel=0.05)


def test_single_schedule_is_one_cosine_over_the_run():
    f = _factors("single")
    assert f[99] == pytest.approx(1.0) and np.all(np.diff(f[100:]) <= 1e-12)
    assert 0.5 < f[300] < 0.9  # the language stages start well below the peak (run #8's schedule)


def test_without_a_warm_up_both_schedules_agree():
    assert np.allclose(_factors("per-stage", warmup=0), _factors("single", warmup=0))


def test_configs_stored_before_the_option_keep_their_single_schedule():
    old = MedCLMConfig().to_dict()
    del old["lr_schedule"]
    assert MedCLMConfig.from_dict(old).lr_schedule == "single"
    assert MedCLMConfig().lr_schedule == "per-stage"
    with pytest.raises(MedCLMError, match="lr_schedule"):
        MedCLMConfig(lr_schedule="linear")
