"""The adaptive scheduler's arithmetic, step by step, and the phase lists of the other curricula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.medclm.config import MedCLMConfig
from training.medclm.schedule import AdaptiveScheduler, record_domain, sequential_phases, sigmoid


def test_ema_seeds_then_updates_with_alpha():
    s = AdaptiveScheduler()
    s.observe("easy", 2.0)
    assert s.ema["easy"] == 2.0 and s.global_ema == 2.0
    s.observe("easy", 1.0)
    assert s.ema["easy"] == pytest.approx(0.1 * 2.0 + 0.9 * 1.0)
    s.observe("medium", 4.0)
    assert s.ema["medium"] == 4.0
    assert s.global_ema == pytest.approx(0.1 * 1.1 + 0.9 * 4.0)


def test_gap_beta_and_p_medium():
    s = AdaptiveScheduler(warm_epochs=4, ramp_epochs=4)
    assert s.gap() == 0.0  # Medium never seen
    s.ema.update(easy=2.0, medium=0.8)
    assert s.gap() == pytest.approx(0.6)
    for epoch, beta in [(0, 0.0), (4, 0.0), (5, 0.25), (6, 0.5), (8, 1.0), (30, 1.0)]:
        s.epoch = epoch
        assert s.beta() == pytest.approx(beta)
    s.epoch = 6
    assert s.p_medium() == pytest.approx(0.5 * 1 / (1 + math.exp(-(0.6 - 0.5) / 0.1)))
    s.ema.update(medium=2.4)  # Medium harder than Easy: negative gap, Medium nearly never drawn
    assert s.p_medium() < 0.5 * 0.001


def test_sigmoid_is_safe_for_large_arguments():
    assert sigmoid(1000) == 1.0 and sigmoid(-1000) == 0.0 and sigmoid(0) == 0.5


def _plateau(s: AdaptiveScheduler, epochs: int, loss: float = 1.0, gap: tuple = (2.0, 0.6)) -> None:
    for _ in range(epochs):
        s.ema.update(easy=gap[0], medium=gap[1])
        s.global_ema = loss
        s.end_epoch()


def test_lambda_hard_rises_on_plateau_with_large_gap_only_from_e_hard():
    s = AdaptiveScheduler(hard_epoch=19, patience=5)
    _plateau(s, 19)  # epochs 0..18: plateau, but before E_hard
    assert s.lambda_hard == 0.0 and s.p_hard() == 0.0
    _plateau(s, 1)  # epoch 19: patience (>= 5 stale epochs) met, median gap 0.7 >= 0.6
    assert s.lambda_hard == pytest.approx(0.05)
    assert s.p_hard() == pytest.approx(0.05)
    _plateau(s, 4)  # the patience counter restarted after the rise
    assert s.lambda_hard == pytest.approx(0.05)
    _plateau(s, 1)
    assert s.lambda_hard == pytest.approx(0.10)
    _plateau(s, 100)
    assert s.lambda_hard == pytest.approx(0.3)  # capped


def test_lambda_hard_needs_median_gap():
    s = AdaptiveScheduler(hard_epoch=0, patience=5)
    _plateau(s, 20, gap=(2.0, 1.0))  # gap 0.5 < 0.6
    assert s.lambda_hard == 0.0


def test_lambda_hard_decays_when_global_loss_rises():
    s = AdaptiveScheduler(lambda_hard=0.2, hard_epoch=0)
    _plateau(s, 1, loss=1.0)
    _plateau(s, 1, loss=1.06)
    assert s.lambda_hard == pytest.approx(0.18)
    _plateau(s, 1, loss=1.08)  # +0.02 < 0.05: no decay
    assert s.lambda_hard == pytest.approx(0.18)


def test_sampling_follows_probabilities():
    s = AdaptiveScheduler(hard_epoch=0, lambda_hard=0.3, epoch=10)
    s.ema.update(easy=2.0, medium=0.4)  # gap 0.8: p_medium ~ 0.95
    rng = np.random.default_rng(0)
    draws = [s.sample(rng) for _ in range(4000)]
    assert draws.count("hard") / 4000 == pytest.approx(0.3, abs=0.03)
    assert draws.count("medium") / 4000 == pytest.approx(0.7 * s.p_medium(), abs=0.03)


def test_state_round_trip():
    s = AdaptiveScheduler()
    s.observe("easy", 1.5)
    s.end_epoch()
    t = AdaptiveScheduler()
    t.load_state_dict(s.state_dict())
    assert t == s


def test_phase_lists():
    config = MedCLMConfig(easy_epochs=1.25, medium_epochs=1.5, hard_epochs=0.25)
    assert sequential_phases(config) == [("easy", 1.25), ("medium", 1.5), ("hard", 0.25)]
    assert sequential_phases(MedCLMConfig(curriculum="mixed", mixed_epochs=2)) == [("mixed", 2)]
    assert sequential_phases(MedCLMConfig(curriculum="hard-only", mixed_epochs=1.0)) == [("hard", 1.0)]
    assert sequential_phases(MedCLMConfig(easy_epochs=1.25, medium_epochs=1.5, hard_epochs=0)) == [
        ("easy", 1.25), ("medium", 1.5)]


def test_domain_is_modality_plus_lesion_class(tiny_records):
    domains = {record_domain(r) for r in tiny_records}
    assert all(d.split("/")[0] in ("ct", "cxr") for d in domains)
    assert any(d.endswith("/none") for d in domains) or all("/" in d for d in domains)
