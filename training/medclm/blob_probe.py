"""Can the LLaVA path learn an answer that only the image holds? A synthetic control task.

Each image is noise with, in half the images, a 4x4-pixel bright square somewhere; the one question asks
whether it is there. Nothing in the text predicts the answer, so the teacher-forced answer loss with each
image's own pixels ("own") falls below the loss with another image's pixels ("other") exactly when the
language model reads the image. The same tiny preset, objective and loss as ``train`` are used.

This is how we found why the trained models ignored the image (docs/medclm.md): trained end to end at the
text model's learning rate the tower collapses, and even a warmed-up tower loses the square once the
language model's gradients reach it; a warmed-up, frozen tower is read within a few dozen steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from training.medclm.config import MedCLMConfig
from training.medclm.data import collate, tokenize_turns
from training.medclm.model import build_model
from training.medclm.objective import MedCLMObjective
from training.medclm.prompts import INSTRUCTIONS
from training.medclm.tokenizer import train_tokenizer
from training.medclm.trainer import param_groups
from training.medclm.warmup import lesion_patch_targets

QUESTION = "Is there a bright square in the image?"
SQUARE = 4  # pixels: a lesion-sized spot at 128 px, inside one 16-px patch or across up to four


@dataclass(frozen=True)
class ProbeSetting:
    """One way of training: optional dense warm-up of the tower, then the answer loss."""

    name: str
    warmup_steps: int
    vision_lr: float  # the tower's learning rate (warm-up and, unless frozen, the answer stage)
    freeze_tower: bool


SETTINGS = (
    ProbeSetting("end to end, tower at 2e-3", 0, 2e-3, False),
    ProbeSetting("warm-up at 2e-3, tower trains at 2e-3", 100, 2e-3, False),
    ProbeSetting("warm-up at 1e-4, tower trains at 1e-4", 100, 1e-4, False),
    ProbeSetting("warm-up at 1e-4, tower frozen", 100, 1e-4, True),
)


class _Record:
    """The three fields ``tokenize_turns`` reads from a VQA record."""

    def __init__(self, answer: str):
        self.question, self.stage, self.target = QUESTION, "hard", f"Answer: {answer}"


def _images(rng: np.random.Generator, labels: np.ndarray, size: int) -> tuple[torch.Tensor, list]:
    """(B, 3, S, S) pixels in the model's [-1, 1] range and each square's top-left corner (None if absent)."""
    pixels = rng.normal(-0.5, 0.1, (len(labels), size, size)).astype(np.float32)
    corners = []
    for index, label in enumerate(labels):
        corner = tuple(rng.integers(8, size - 8 - SQUARE, 2)) if label else None
        if corner:
            pixels[index, corner[0]:corner[0] + SQUARE, corner[1]:corner[1] + SQUARE] += 1.2
        corners.append(corner)
    return torch.from_numpy(np.repeat(pixels[:, None], 3, axis=1)), corners


def _boxes(corner: tuple[int, int] | None, size: int) -> list[tuple[float, ...]]:
    """The square as a lesion box on the data engine's [0, 1000) scale (none when absent)."""
    if corner is None:
        return []
    row, col = corner
    return [tuple(v * 1000 / size for v in (col, row, col + SQUARE, row + SQUARE))]


def run_setting(setting: ProbeSetting, steps: int = 200, lr: float = 2e-3, seed: int = 0,
                progress: bool = True) -> dict:
    """Train one setting from scratch; returns warm-up recall and the final own/other answer losses."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = MedCLMConfig(lr=lr, vision_lr=setting.vision_lr, weight_decay=0.0)
    tokenizer = train_tokenizer(list(INSTRUCTIONS) + [QUESTION, "Answer: yes", "Answer: no"], 256)
    model = build_model(config, tokenizer)
    objective = MedCLMObjective(model, None, config)
    tower = model.model.vision_tower
    grid = config.image_size // config.patch_size
    started = time.perf_counter()

    recall = None
    if setting.warmup_steps:
        head = torch.nn.Linear(config.vision_hidden, 1)
        optimizer = torch.optim.AdamW([{"params": head.parameters(), "lr": lr},
                                       {"params": tower.parameters(), "lr": setting.vision_lr}])
        for _ in tqdm(range(setting.warmup_steps), desc=f"{setting.name}: warm-up", disable=not progress):
            pixels, corners = _images(rng, rng.integers(0, 2, 32), config.image_size)
            target = torch.from_numpy(np.stack([lesion_patch_targets(_boxes(corner, config.image_size), grid)[0]
                                                for corner in corners]))
            logits = head(objective.patch_features(pixels)).squeeze(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target,
                                                                        pos_weight=torch.tensor(float(grid * grid)))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        recall = float(((logits > 0) & (target > 0)).sum() / target.sum().clamp_min(1))

    if setting.freeze_tower:
        tower.requires_grad_(False)
    optimizer = torch.optim.AdamW(param_groups(objective, config))  # the trainer's groups: tower at vision_lr
    sequences = {answer: tokenize_turns(tokenizer, [_Record(answer)], config.image_tokens, 0.8, 0.2)
                 for answer in ("yes", "no")}

    def batch(size: int):
        labels = rng.integers(0, 2, size)
        pixels, _ = _images(rng, labels, config.image_size)
        return pixels, collate([sequences["yes" if label else "no"] for label in labels], tokenizer.pad_token_id)

    for _ in tqdm(range(steps), desc=f"{setting.name}: answers", disable=not progress):
        pixels, tokens = batch(16)
        out = objective(pixels, tokens["input_ids"], tokens["attention_mask"], tokens["weights"])
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        pixels, tokens = batch(128)
        own = float(objective(pixels, tokens["input_ids"], tokens["attention_mask"], tokens["weights"])["lm"])
        other = float(objective(torch.roll(pixels, 1, 0), tokens["input_ids"], tokens["attention_mask"],
                                tokens["weights"])["lm"])
    return {"setting": setting.name, "warmup_recall": recall, "own": round(own, 4), "other": round(other, 4),
            "reads_image": other > own + 0.05, "seconds": round(time.perf_counter() - started, 1)}


def blob_probe(steps: int = 200, seed: int = 0, progress: bool = True) -> list[dict]:
    """Every setting of :data:`SETTINGS`, one after another (about 2 min each on 2 cores)."""
    return [run_setting(setting, steps=steps, seed=seed, progress=progress) for setting in SETTINGS]
