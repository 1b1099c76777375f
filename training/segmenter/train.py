"""Training loop: phantoms → preprocessed tensors → UNet with cross-entropy + soft Dice, tqdm progress."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training.data.anatomy import organs_for
from training.segmenter.checkpoint import save_checkpoint
from training.segmenter.config import SegmenterConfig
from training.segmenter.dataset import SegmentationCase, load_cases, split_cases
from training.segmenter.preprocessing import PreprocessSpec, default_spec, letterbox_labels, preprocess_image
from training.segmenter.unet import OrganUNet


@dataclass
class TrainResult:
    """What ``train`` produced: the model, where it was saved and the held-out cases for evaluation."""

    model: OrganUNet
    checkpoint: Path
    spec: PreprocessSpec
    train_cases: list[SegmentationCase]
    test_cases: list[SegmentationCase]
    seconds: float


def to_tensors(cases: list[SegmentationCase], spec: PreprocessSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocess once up front so the training loop is pure tensor work."""
    images = np.stack([preprocess_image(c.image, spec)[0] for c in cases])
    labels = np.stack([letterbox_labels(c.classes, spec) for c in cases])
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def augment(images: torch.Tensor, labels: torch.Tensor, config: SegmenterConfig,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random translation (same for image and mask) and intensity jitter. No flips: left/right organs
    are distinct classes, so a mirrored image would teach the wrong side."""
    if config.augment_shift > 0:
        s = config.augment_shift
        shifts = torch.randint(-s, s + 1, (images.shape[0], 2), generator=generator)
        padded_i = F.pad(images, (s, s, s, s))
        padded_l = F.pad(labels, (s, s, s, s))
        h, w = images.shape[-2:]
        images = torch.stack([padded_i[b, :, s + dy:s + dy + h, s + dx:s + dx + w]
                              for b, (dy, dx) in enumerate(shifts.tolist())])
        labels = torch.stack([padded_l[b, s + dy:s + dy + h, s + dx:s + dx + w]
                              for b, (dy, dx) in enumerate(shifts.tolist())])
    if config.augment_intensity > 0:
        j = config.augment_intensity
        gain = 1 + (torch.rand(images.shape[0], 1, 1, 1, generator=generator) * 2 - 1) * j
        bias = (torch.rand(images.shape[0], 1, 1, 1, generator=generator) * 2 - 1) * j
        images = images * gain + bias
    return images, labels


def coarse_labels(labels: torch.Tensor, stride: int) -> torch.Tensor:
    """Labels on the network's output grid: the label at the centre of each ``stride`` x ``stride`` cell."""
    return labels[:, stride // 2::stride, stride // 2::stride] if stride > 1 else labels


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """Cross-entropy plus (1 - mean soft Dice over the organ classes)."""
    ce = F.cross_entropy(logits, labels)
    if dice_weight == 0:
        return ce
    probs = torch.softmax(logits, dim=1)[:, 1:]
    onehot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    soft_dice = (2 * inter + 1.0) / (total + 1.0)
    return ce + dice_weight * (1 - soft_dice.mean())


def train(config: SegmenterConfig, out_dir: Path, data_dir: Path | None = None,
          progress: bool = True) -> TrainResult:
    """Train one modality's UNet and write ``out_dir/checkpoint.pt`` (weights + config + preprocessing)."""
    started = time.perf_counter()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = default_spec(config.modality, config.input_size)
    cases = load_cases(config.modality, data_dir, config.count, config.data_seed, progress)
    train_cases, test_cases = split_cases(cases, config.test_percent)
    images, labels = to_tensors(train_cases, spec)

    num_classes = len(organs_for(config.modality)) + 1
    # channels_last lets oneDNN use its NHWC convolution kernels, about 2x faster backward passes on CPU.
    model = OrganUNet(num_classes, config.widths, config.stem_stride).to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_cases) / config.batch_size)
    total_steps = max(1, steps_per_epoch * config.epochs)
    # One-cycle: a short warm-up keeps BatchNorm statistics sane, cosine decay lands on a flat minimum.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=total_steps,
                                                    pct_start=0.15)
    generator = torch.Generator().manual_seed(config.seed)

    model.train()
    bar = tqdm(total=total_steps, desc=f"train {config.modality}", disable=not progress, unit="step")
    for epoch in range(config.epochs):
        order = torch.randperm(len(train_cases), generator=generator)
        for start in range(0, len(order), config.batch_size):
            index = order[start:start + config.batch_size]
            x, y = augment(images[index], labels[index], config, generator)
            x = x.contiguous(memory_format=torch.channels_last)
            loss = segmentation_loss(model(x), coarse_labels(y, config.stem_stride), config.dice_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    bar.close()
    model = model.to(memory_format=torch.contiguous_format).eval()
    checkpoint = save_checkpoint(out_dir / "checkpoint.pt", model, config, spec)
    return TrainResult(model, checkpoint, spec, train_cases, test_cases, time.perf_counter() - started)
