"""Curricula: which stage each training batch comes from.

- ``sequential``: Easy → Medium → Hard, a number of epochs per stage (``*_epochs``).
- ``adaptive``: MedCLM's scheduler (arXiv 2510.04477, constants from its public code):
    EMA per stage       m_s ← (1−α)·m_s + α·loss,  α = 0.9 (also one global EMA over all batches)
    gap                 g = (m_easy − m_medium) / m_easy
    ramp                β = clip((epoch − E_warm) / κ, 0, 1),  E_warm = 4
    Medium probability  p_medium = β · σ((g − γ) / τ),  γ = 0.5, τ = 0.1
    Hard probability    λ_H from epoch E_hard = 19: starts 0; +0.05 (cap 0.3) when the global EMA has not
                        improved by ε = 0.01 for 5 epochs (plateau) while the median gap of those epochs is
                        ≥ 0.6; ×0.9 when the global EMA rose by ≥ 0.05 since the previous epoch.
    Batches are grouped by domain (lesion class + modality).
  For short CPU runs an "epoch" is a pseudo-epoch of ``adaptive_epoch_steps`` batches, so the paper's epoch
  constants (the defaults) keep their meaning relative to run length.
- ``mixed``: all stages shuffled together (baseline).
- ``hard-only``: answer-only Hard records (baseline: weak supervision without a curriculum).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import numpy as np

from training.medclm.config import MedCLMConfig

STAGE_ORDER = ("easy", "medium", "hard")


def sigmoid(x: float) -> float:
    """Numerically safe logistic function."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def sequential_phases(config: MedCLMConfig) -> list[tuple[str, float]]:
    """(stage, epochs) in curriculum order for the sequential, mixed and hard-only curricula."""
    if config.curriculum == "sequential":
        phases = [("easy", config.easy_epochs), ("medium", config.medium_epochs), ("hard", config.hard_epochs)]
    elif config.curriculum == "mixed":
        phases = [("mixed", config.mixed_epochs)]
    elif config.curriculum == "hard-only":
        phases = [("hard", config.mixed_epochs)]
    else:
        raise ValueError(f"{config.curriculum} is not a phase-based curriculum")
    return [(stage, epochs) for stage, epochs in phases if epochs > 0]


@dataclass
class AdaptiveScheduler:
    """MedCLM's adaptive Easy/Medium/Hard sampler; call ``observe`` per batch and ``end_epoch`` per epoch."""

    alpha: float = 0.9
    warm_epochs: int = 4
    ramp_epochs: int = 4
    gamma: float = 0.5
    tau: float = 0.1
    hard_epoch: int = 19
    hard_step: float = 0.05
    hard_cap: float = 0.3
    patience: int = 5
    eps: float = 0.01
    min_gap: float = 0.6
    rise: float = 0.05
    decay: float = 0.9
    epoch: int = 0
    ema: dict[str, float | None] = field(default_factory=lambda: {s: None for s in STAGE_ORDER})
    global_ema: float | None = None
    lambda_hard: float = 0.0
    best_global: float | None = None
    epochs_without_improvement: int = 0
    previous_global: float | None = None
    gaps: list[float] = field(default_factory=list)

    @classmethod
    def from_config(cls, config: MedCLMConfig) -> "AdaptiveScheduler":
        """Scheduler with the constants of ``config`` (the paper's by default)."""
        return cls(alpha=config.adaptive_alpha, warm_epochs=config.adaptive_warm_epochs,
                   ramp_epochs=config.adaptive_ramp_epochs, gamma=config.adaptive_gamma, tau=config.adaptive_tau,
                   hard_epoch=config.adaptive_hard_epoch, hard_step=config.adaptive_hard_step,
                   hard_cap=config.adaptive_hard_cap, patience=config.adaptive_plateau_patience,
                   eps=config.adaptive_plateau_eps, min_gap=config.adaptive_min_gap, rise=config.adaptive_rise,
                   decay=config.adaptive_decay)

    def _update(self, current: float | None, loss: float) -> float:
        return loss if current is None else (1 - self.alpha) * current + self.alpha * loss

    def observe(self, stage: str, loss: float) -> None:
        """Fold one batch's loss into its stage's EMA and the global EMA (the first value seeds an EMA)."""
        self.ema[stage] = self._update(self.ema[stage], loss)
        self.global_ema = self._update(self.global_ema, loss)

    def gap(self) -> float:
        """g = (m_easy − m_medium) / m_easy; 0 until both stages have been seen."""
        easy, medium = self.ema["easy"], self.ema["medium"]
        if easy is None or medium is None or easy == 0:
            return 0.0
        return (easy - medium) / easy

    def beta(self) -> float:
        """The Medium ramp: 0 before E_warm, then linear to 1 over κ epochs."""
        if self.ramp_epochs <= 0:
            return 1.0 if self.epoch >= self.warm_epochs else 0.0
        return min(1.0, max(0.0, (self.epoch - self.warm_epochs) / self.ramp_epochs))

    def p_medium(self) -> float:
        """Probability that a non-Hard batch is Medium: β · σ((g − γ) / τ)."""
        return self.beta() * sigmoid((self.gap() - self.gamma) / self.tau)

    def p_hard(self) -> float:
        """Probability of a Hard batch: λ_H from epoch E_hard, else 0."""
        return self.lambda_hard if self.epoch >= self.hard_epoch else 0.0

    def sample(self, rng: np.random.Generator) -> str:
        """The stage of the next batch."""
        if rng.random() < self.p_hard():
            return "hard"
        return "medium" if rng.random() < self.p_medium() else "easy"

    def end_epoch(self) -> None:
        """Epoch bookkeeping: gap history, plateau detection, λ_H rise or decay, then epoch += 1."""
        self.gaps.append(self.gap())
        current = self.global_ema
        if current is not None:
            if self.best_global is None or current < self.best_global - self.eps:
                self.best_global = current
                self.epochs_without_improvement = 0
            else:
                self.epochs_without_improvement += 1
            rose = self.previous_global is not None and current - self.previous_global >= self.rise
            if rose:
                self.lambda_hard *= self.decay
            elif (self.epoch >= self.hard_epoch and self.epochs_without_improvement >= self.patience
                  and statistics.median(self.gaps[-self.patience:]) >= self.min_gap):
                self.lambda_hard = min(self.hard_cap, self.lambda_hard + self.hard_step)
                self.epochs_without_improvement = 0  # a new plateau must build up before the next rise
            self.previous_global = current
        self.epoch += 1

    def state_dict(self) -> dict:
        """JSON-serialisable state for checkpoints."""
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output."""
        self.__dict__.update(state)


def record_domain(record) -> str:
    """Domain = modality + lesion class of the record's first finding ('none' without findings)."""
    findings = record.findings or record.case_findings
    return f"{record.modality}/{findings[0].label if findings else 'none'}"
