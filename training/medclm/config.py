"""Training configuration: one dataclass, a reason beside each default, presets, YAML and ``--key=value``.

nanoGPT style: everything that decides a run lives in :class:`MedCLMConfig`; a checkpoint stores it in
``medclm.json`` so it can be rebuilt. Overrides that name an unknown key fail instead of being ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.medclm.errors import MedCLMError
from training.overrides import apply_overrides as shared_apply_overrides

CURRICULA = ("sequential", "adaptive", "mixed", "hard-only")
LR_SCHEDULES = ("per-stage", "single")
BOX_ENCODINGS = ("corners", "centre_size")  # dense warm-up box targets, training.medclm.warmup
BOX_TOKENS = ("digits", "pixels")  # how the language model writes a box coordinate, training.medclm.tokenizer


@dataclass
class MedCLMConfig:
    """Everything that decides a MedCLM training run (defaults = the ``tiny`` CPU preset)."""

    # --- model (ignored when init_from names a pretrained checkpoint) ---
    image_size: int = 128  # phantoms are 256-320 px; 128 keeps lesions >= 2 px while 64 patches stay cheap
    patch_size: int = 16  # 8x8 = 64 image tokens: most of the sequence is still text, so CPU steps stay fast
    vision_hidden: int = 192  # head_dim 64 with 3 heads; 64 is a head size every vLLM attention backend has
    vision_layers: int = 5  # the last layer is unused (LLaVA reads layer -2), so 4 layers do the work
    vision_heads: int = 3  # head_dim = 64
    vision_intermediate: int = 768  # the usual 4x MLP ratio
    text_hidden: int = 256  # ~3M text parameters: enough for templated rationales, fits the 30 min budget
    text_layers: int = 4  # depth helps the rationale's step order more than width at this size
    text_heads: int = 4  # head_dim = 64
    text_intermediate: int = 704  # SwiGLU's 8/3 ratio, rounded to a multiple of 64
    max_positions: int = 1024  # 64 image tokens + up to ~4 question/answer turns with room to spare
    vocab_size: int = 1024  # BPE merges over a templated corpus saturate long before this; small = cheap softmax
    box_tokens: str = "digits"  # digits: a coordinate is three digit tokens; pixels: the coordinates of every box
    # in the training text are snapped to the input's pixel grid (1000 / image_size units) and each of those
    # image_size + 1 values is one token, with sinusoidal embeddings so neighbours start alike. The box text
    # contract is unchanged; the model writes one decision per coordinate instead of a sawtooth tens digit.
    vision_feature_layer: int = -2  # LLaVA's standard choice; vLLM drops the unused last layer itself
    # --- fine-tuning from an existing local HF LLaVA-family checkpoint ---
    init_from: str = ""  # path of a local HF LLaVA checkpoint; empty = random init from the sizes above
    lora_rank: int = 0  # 0 = full training; >0 = LoRA adapters on the text model's projections (peft)
    lora_alpha: int = 16  # LoRA scaling numerator (scale = alpha / rank), peft's usual default
    lora_dropout: float = 0.05  # light regularisation on the adapter input, as in LLaVA's LoRA recipes
    # --- data ---
    questions_per_image: int = 1  # >1 packs several QA turns about one image into a sequence (~3x samples/s),
    # but later turns copy the rationale of the first, so only a quarter of the loss needs the image or the
    # question: at 4 the model named the asked organ in 12% of presence rationales, at 1 in 88-100% (run #9)
    eval_records: int = 24  # val records greedily decoded at each evaluation; ~10 s on 2 CPU cores
    # --- loss ---
    answer_weight: float = 0.8  # lambda_ans of MedCLM: the "Answer: X" line and the end-of-sequence token
    reasoning_weight: float = 0.2  # lambda_cot of MedCLM: the numbered reasoning steps
    dense_weight: float = 0.3  # dense loss after warm-up while the tower still trains (freeze_vision off)
    dense_organ_weight: float = 1.0  # per-patch organ label (cross-entropy over the global organ labels)
    dense_lesion_weight: float = 1.0  # per-patch lesion presence (BCE); lesions are rare, so pos_weight below
    dense_lesion_pos_weight: float = 5.0  # ~5% of patches hold a lesion; balances the BCE
    dense_box_weight: float = 2.0  # L1 box regression on lesion patches, coordinates in [0, 1]
    dense_box_encoding: str = "corners"  # corners: each patch regresses the box's corners in [0, 1] (sigmoid);
    # centre_size: the box centre's offset from the patch centre and log width/height, both in patch units (as
    # detectors encode boxes), L1 in that space: a small lesion's error counts as much as a large one's. Run #16:
    # the tower's box at the lesion patch went from 0.00/0.06/0.52 to 0.02/0.21/0.77 Acc@0.5, but the language
    # model's boxes did not follow at 7,840 language steps. The long preset uses it with 15,680 (run #17); tiny's
    # shorter language stages keep corners (docs/medclm.md)
    dense_digit_weight: float = 0.0  # hundreds and tens digit of each box coordinate as classes on lesion patches,
    # the form the language model writes boxes in; off: the tower learnt the hundreds but not the tens, and the
    # language model's boxes got no better (run #13, docs/medclm.md)
    dense_image_weight: float = 0.0  # image-level answers (host organs, finding types, count) on every patch
    freeze_projector: bool = False  # keep the projector as warm-up/calibration left it during the LM stages
    freeze_vision: bool = True  # freeze the tower after warm-up (or a pretrained one from the start), as LLaVA
    # freezes CLIP: the language model's large early gradients through the projector erased the warmed-up
    # lesion features, even at vision_lr (blob-probe: read with a frozen tower, never while the tower
    # trained; docs/medclm.md)
    # --- curriculum ---
    curriculum: str = "sequential"  # sequential | adaptive | mixed | hard-only
    warmup_steps: int = 1500  # vision-only dense warm-up (~2.5 min here): LM loss alone left the tower blind;
    # lesion-probe on 3.3k training images: large-lesion recall 0.71 (run #9's 300 steps on 483 images: 0.09);
    # 3,000 steps were no better (0.73 large, 0.27 small vs 0.30)
    calibrate_projector: bool = False  # standardise the projector on the warmed-up features before the LM
    # stages (training.medclm.projector); measured without effect on image use so far (docs/medclm.md), so off
    align_steps: int = 0  # optional answer-only (Hard-style) steps between warm-up and the curriculum, LLaVA's
    # "feature alignment" stage: every target token depends on the image, so the language model learns to read
    # the patches before the long templated rationales dilute that signal (runs without it ignored the image)
    # Stage lengths are fractions of an epoch of the default --count 2000 data (16.7k records per stage): many
    # images seen a few times each, where 600 images seen many times were memorised (docs/medclm.md, run #10).
    easy_epochs: float = 0.6  # sequential: passes over Easy; ~630 steps, ~6 min here
    medium_epochs: float = 0.75  # sequential: passes over Medium; ~780 steps, ~7 min here
    hard_epochs: float = 0.15  # sequential: ~160 steps. Half as many at the end of the cosine broke the
    # reasoning format (validity 0.99 -> 0.82) without teaching the brief prompt (run #9, docs/medclm.md)
    replay: float = 0.5  # sequential: share of later-phase batches drawn from earlier stages, so the
    # reasoning prompt still gets reasoning after the answer-only Hard phase (no catastrophic forgetting)
    hard_preview: float = 0.1  # sequential: share of Easy- and Medium-phase batches drawn from Hard, so the
    # brief prompt is learnt while the LR is high and the final Hard phase does not leak "Answer:" into replies
    # to the reasoning prompt (run #9: 62 of its 69 invalid outputs)
    adaptive_epochs: int = 24  # adaptive: number of (pseudo-)epochs; paper uses real epochs
    adaptive_epoch_steps: int = 40  # adaptive: steps per pseudo-epoch, so the paper's epoch constants fit CPU runs
    adaptive_alpha: float = 0.9  # paper: EMA m <- (1-alpha) m + alpha loss
    adaptive_warm_epochs: int = 4  # paper: E_warm, no Medium before it
    adaptive_ramp_epochs: int = 4  # kappa: epochs for the Medium ramp beta to reach 1 (paper leaves it open)
    adaptive_gamma: float = 0.5  # paper: gap threshold of the Medium sigmoid
    adaptive_tau: float = 0.1  # paper: sigmoid temperature
    adaptive_hard_epoch: int = 19  # paper: E_hard, first epoch that may draw Hard batches
    adaptive_hard_step: float = 0.05  # paper: lambda_H increment on a plateau
    adaptive_hard_cap: float = 0.3  # paper: lambda_H cap
    adaptive_plateau_patience: int = 5  # paper: epochs without an epsilon improvement that count as a plateau
    adaptive_plateau_eps: float = 0.01  # paper: improvement epsilon of the global EMA
    adaptive_min_gap: float = 0.6  # paper: median gap needed before lambda_H may rise
    adaptive_rise: float = 0.05  # paper: a global-loss rise this large shrinks lambda_H
    adaptive_decay: float = 0.9  # paper: lambda_H multiplier on a rise
    mixed_epochs: float = 1.0  # mixed / hard-only baselines: passes over their records
    curriculum_steps: int = 0  # >0: scale the curriculum's phases (after warm-up/align) to exactly this many
    # optimiser steps, keeping their proportions (adaptive: its pseudo-epochs shrink) -- equal compute for ablations
    # --- optimisation ---
    batch_size: int = 16  # sequences per step (x questions_per_image questions); fills 2 cores without stalls
    lr: float = 2e-3  # from scratch a 5M model needs ~50x the paper's 2e-5 (that one fine-tunes a 7B model)
    vision_lr: float = 5e-4  # the CLIP tower's peak LR: at 2e-3 the from-scratch tower collapsed to constant
    # features (blob-probe: recall of the square's patch 0.00 after a 100-step warm-up at 2e-3, 1.00 at 1e-4);
    # 5e-4 found more phantom lesions than 1e-4 after 300 warm-up steps (large-lesion recall 0.36 vs 0.09,
    # lesion-probe; docs/medclm.md, run #10)
    min_lr: float = 1e-5  # cosine floor, ~1% of the peak like the paper's 2e-5 -> 1e-6 ratio
    lr_warmup_steps: int = 100  # linear warm-up: Adam's moments are noisy in the first steps
    lr_schedule: str = "per-stage"  # per-stage: the vision warm-up and the language stages each get a warm-up
    # and cosine; single: one cosine over the whole run, which left the language model (idle in the vision
    # warm-up) starting at 75% of the peak and decaying in 430 steps (run #8; docs/medclm.md)
    betas: tuple[float, float] = (0.9, 0.98)  # paper; 0.98 reacts faster to the curriculum's stage switches
    weight_decay: float = 0.05  # paper; applied to matrices only (not norms, biases), as in nanoGPT
    grad_clip: float = 1.0  # paper; skipped under ZNorm, whose standardised gradients have fixed scale
    znorm: bool = False  # ZNorm gradient standardisation (arXiv 2408.01215)
    mixed_precision: str = "auto"  # auto = bf16 on GPUs and on CPUs with native bf16 (AVX512-BF16/AMX); fp32 else:
    # on this AVX2-only EPYC bf16 autocast is emulated and measured 8x slower than fp32 (16 s vs 2 s per step)
    # --- bookkeeping ---
    eval_every: int = 250  # steps between in-process greedy evaluations
    log_every: int = 10  # steps between loss-history entries
    max_new_tokens: int = 160  # longest Easy/Medium target is ~150 tokens with digit-level boxes
    threads: int = 2  # torch intra-op threads; the reference machine has 2 cores
    seed: int = 0  # weight init, batch order and curriculum sampling
    preset: str = "tiny"  # recorded for provenance

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # YAML/JSON give lists
        problems = []
        if self.curriculum not in CURRICULA:
            problems.append(f"curriculum {self.curriculum!r} is not one of {', '.join(CURRICULA)}")
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.vision_hidden % self.vision_heads or self.text_hidden % self.text_heads:
            problems.append("hidden sizes must be multiples of their head counts")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule {self.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            problems.append(f"mixed_precision {self.mixed_precision!r} is not one of auto, no, bf16, fp16")
        if self.dense_box_encoding not in BOX_ENCODINGS:
            problems.append(f"dense_box_encoding {self.dense_box_encoding!r} is not one of {', '.join(BOX_ENCODINGS)}")
        if self.box_tokens not in BOX_TOKENS:
            problems.append(f"box_tokens {self.box_tokens!r} is not one of {', '.join(BOX_TOKENS)}")
        if self.box_tokens == "pixels" and self.init_from:
            problems.append("box_tokens 'pixels' adds tokens to a tokenizer trained here; init_from brings its own "
                            "(set box_tokens: digits)")
        if self.questions_per_image < 1 or self.batch_size < 1:
            problems.append("questions_per_image and batch_size must be at least 1")
        if not 0 <= self.replay < 1:
            problems.append("replay must be in [0, 1)")
        if not 0 <= self.hard_preview < 1:
            problems.append("hard_preview must be in [0, 1)")
        if min(self.answer_weight, self.reasoning_weight) < 0 or self.answer_weight == 0:
            problems.append("answer_weight must be > 0 and reasoning_weight >= 0")
        if min(self.lr, self.vision_lr) <= 0:
            problems.append("lr and vision_lr must be > 0")
        if len(self.betas) != 2:
            problems.append("betas needs two values")
        if problems:
            raise MedCLMError("invalid config: " + "; ".join(problems))

    def resolved_precision(self) -> str:
        """``mixed_precision`` with ``auto`` resolved for this machine: bf16 where it is native, else no."""
        if self.mixed_precision != "auto":
            return self.mixed_precision
        import torch

        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        try:  # private but long-standing check for the oneDNN bf16 kernels (AVX512-BF16 / AMX)
            native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            native = False
        return "bf16" if native else "no"

    @property
    def image_tokens(self) -> int:
        """Image placeholder tokens per image: one per patch (LLaVA's 'default' strategy drops CLS)."""
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MedCLMConfig":
        """Rebuild from :meth:`to_dict` output; unknown keys are an error, not silently dropped."""
        _check_keys(data, "config")
        # Stored before lr_schedule existed: those runs had one cosine, so resume and provenance keep it.
        return cls(**{"lr_schedule": "single", **data})


# Presets change only what differs from the tiny defaults above; each line says why.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "long": {  # CPU, `make medclm-long`: tiny's model on 20,000 phantoms (`--count 10000`), about 1 h 40 min here
        # with 13.7 GiB peak RSS before records were snapped in place (runs #11-#21, docs/medclm.md). Five times
        # the images let a longer warm-up find more lesions without memorising, and the image-level heads
        # (dense_image_weight) learn there; 12,000 steps beat 4,000 (large-lesion recall 0.72 -> 0.86; closed
        # 0.66 -> 0.71, open 0.57 -> 0.62, run #14).
        # The centre/size box target places the tower's boxes better (run #16), and the language model reads
        # them only with 15,680 language steps, twice run #14's: closed 0.71 -> 0.78, format 0.95 -> 0.97
        # (run #17, confirmed from scratch). One token per box coordinate: format 0.97 -> 0.995 (the target),
        # Acc@0.3 0.12 -> 0.19, closed 0.78 -> 0.76 within the spread between from-scratch runs (run #21).
        # A wider text model at lr 2e-3 ignored the question (run #10), so the model stays tiny.
        "warmup_steps": 12000, "dense_image_weight": 1.0, "dense_box_encoding": "centre_size",
        "curriculum_steps": 15680, "box_tokens": "pixels", "eval_every": 1000, "preset": "long",
    },
    "base-gpu": {  # one GPU: 224 px / patch 14 (256 tokens) and a ~100M-parameter model, bf16
        "image_size": 224, "patch_size": 14, "vision_hidden": 512, "vision_layers": 9, "vision_heads": 8,
        "vision_intermediate": 2048, "text_hidden": 768, "text_layers": 12, "text_heads": 12,
        "text_intermediate": 2048, "max_positions": 2048, "vocab_size": 2048, "batch_size": 32,
        "lr": 5e-4, "warmup_steps": 3000, "easy_epochs": 4.0, "medium_epochs": 4.0, "hard_epochs": 2.0,
        "lr_warmup_steps": 500, "eval_every": 1000, "eval_records": 128, "threads": 8, "preset": "base-gpu",
    },
    "large-gpu": {  # multi-GPU with `accelerate launch`: 336 px / patch 14 (576 tokens) like LLaVA-1.5
        "image_size": 336, "patch_size": 14, "vision_hidden": 1024, "vision_layers": 25, "vision_heads": 16,
        "vision_intermediate": 4096, "text_hidden": 2048, "text_layers": 24, "text_heads": 16,
        "text_intermediate": 5632, "max_positions": 4096, "vocab_size": 4096, "batch_size": 16,
        "lr": 2e-4, "warmup_steps": 5000, "easy_epochs": 6.0, "medium_epochs": 6.0, "hard_epochs": 3.0,
        "lr_warmup_steps": 1000, "eval_every": 2000, "eval_records": 256, "threads": 8, "preset": "large-gpu",
    },
}


def box_grid(stored: dict[str, Any]) -> int | None:
    """Lines per side of the grid a model's boxes were snapped to in training, from its stored config.

    ``stored`` is the ``config`` of a checkpoint's ``medclm.json``: the input width when it was trained with
    ``box_tokens: pixels``, else None (digits, as every checkpoint written before ``box_tokens`` existed).
    """
    return int(stored["image_size"]) if stored.get("box_tokens") == "pixels" else None


def _check_keys(data: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(MedCLMConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise MedCLMError(f"unknown {where} key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")


def load_config(preset: str = "tiny", yaml_path: Path | None = None, overrides: list[str] | None = None,
                ) -> MedCLMConfig:
    """Preset, then the YAML file's keys (it may name its own ``preset``), then ``--key=value`` overrides.

    Any unknown key, in the file or on the command line, raises :class:`MedCLMError`.
    """
    file_values: dict[str, Any] = {}
    if yaml_path is not None:
        import yaml

        path = Path(yaml_path)
        if not path.is_file():
            raise MedCLMError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise MedCLMError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise MedCLMError(f"config file {path} must hold a mapping of keys to values")
        _check_keys(loaded, f"config file {path}")
        file_values = loaded
        preset = file_values.get("preset", preset)
    if preset not in PRESETS:
        raise MedCLMError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    values = {**PRESETS[preset], "preset": preset, **file_values}
    config = MedCLMConfig(**values)
    return apply_overrides(config, overrides or [])


def apply_overrides(config: MedCLMConfig, overrides: list[str]) -> MedCLMConfig:
    """Return a copy of ``config`` with ``--key=value`` strings applied; unknown keys raise MedCLMError."""
    return shared_apply_overrides(config, overrides, MedCLMError)
