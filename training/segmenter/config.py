"""Training configuration: one dataclass, a reason beside each default, ``--key=value`` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from training.data.anatomy import MODALITIES
from training.overrides import apply_overrides as shared_apply_overrides
from training.segmenter.errors import SegmenterError


@dataclass
class SegmenterConfig:
    """Everything that decides a trained segmenter; saved inside every checkpoint and provenance file."""

    modality: str = "ct"  # which organ vocabulary and preprocessing to use (see training.data.anatomy)
    count: int = 400  # phantom cases generated when no --data is given; 320 training images cover the slice levels
    data_seed: int = 0  # phantom generator seed, recorded so the data can be regenerated bit for bit
    test_percent: int = 20  # share of images held out for evaluation, chosen by a hash of the file name
    input_size: int = 256  # network input side; CT phantoms are 256x256 so CT needs no resampling
    # channels per level; multiples of 16 suit int8 kernels; 8 at the stem never learnt the kidneys
    widths: tuple[int, ...] = (16, 32, 64, 64)
    stem_stride: int = 2  # first conv halves the resolution: 4x less compute, logits are upsampled back
    epochs: int = 10  # 400 steps: CT mean Dice 0.927 after ~8 min on one contended core (≈ 5 min on two)
    batch_size: int = 8  # fits the 2-core CPU cache well; larger batches did not train faster per image
    lr: float = 3e-3  # AdamW one-cycle peak; 1e-2 left the kidneys unlearnt (Dice 0) in 300 steps
    weight_decay: float = 1e-4  # light regularisation; the phantoms leave little room to overfit
    dice_weight: float = 1.0  # soft Dice next to cross-entropy lifts the small organs (aorta, kidneys)
    augment_shift: int = 12  # random translation in pixels; position priors stay but are not memorised
    augment_intensity: float = 0.1  # random contrast/brightness jitter on the [0,1] input
    threads: int = 2  # torch intra-op threads; the reference machine has 2 cores
    seed: int = 0  # weight init and batch order

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise SegmenterError(f"unknown modality {self.modality!r}; expected one of {', '.join(MODALITIES)}")
        self.widths = tuple(int(w) for w in self.widths)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SegmenterConfig":
        """Rebuild from :meth:`to_dict` output; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SegmenterError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**data)


def apply_overrides(config: SegmenterConfig, overrides: list[str]) -> SegmenterConfig:
    """Return a copy of ``config`` with ``--key=value`` strings applied; unknown keys raise SegmenterError."""
    return shared_apply_overrides(config, overrides, SegmenterError)
