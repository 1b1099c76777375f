"""Does the warmed-up vision tower see the lesions? Its warm-up heads' lesion score on held-out images.

Read from a checkpoint that still has its warm-up heads (``trainer_state.pt``, e.g. ``RUN/01-warmup``):
- per lesion, by size category: is the lesion logit > 0 at the patch holding the lesion's centre (and
  anywhere in the 3x3 patches around it), and how good the box head's box is at that patch (IoU, centre
  error): the best box a reader of these features could find, even knowing where to look;
- per image: does the largest lesion logit tell images with lesions from images without;
- if the warm-up trained the image-level heads (``dense_image_weight`` > 0): the lesion count (0, 1, 2, 3+)
  and the exact set of host organs, read from the patch-averaged heads, with the count's majority-class rate.

The language model can only answer from what the tower's features hold, so this bounds its closed and
grounding accuracy, and it takes seconds where a full training run and evaluation take 20 minutes
(docs/medclm.md, run #10).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training.data.boxes import BOX_SCALE, box_iou, centre_offset
from training.data.context import size_category
from training.medclm.checkpoint import read_meta, read_trainer_state
from training.medclm.config import MedCLMConfig
from training.medclm.data import ImageCache, load_records, record_image_path
from training.medclm.errors import MedCLMError
from training.medclm.eval_report import SIZES, rate
from training.medclm.model import base_llava, patch_grid
from training.medclm.objective import MedCLMObjective
from training.medclm.warmup import (DIGIT_PLACES, VisionWarmupHeads, box_digits, centre_patch, digit_box,
                                   image_level_targets)


@torch.no_grad()
def lesion_probe(checkpoint: Path, data_dir: Path, split: str = "test", limit: int | None = None,
                 batch_size: int = 32) -> dict:
    """Lesion recall at the centre patch and in its 3x3 neighbourhood per size category and modality, and
    image-level lesion/no-lesion accuracy of the max lesion logit (threshold 0 and the best threshold), and
    ``image_level`` (count and host-set accuracy) when the warm-up trained those heads, else None."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    checkpoint, data_dir = Path(checkpoint), Path(data_dir)
    config_meta = read_meta(checkpoint)
    heads_state = read_trainer_state(checkpoint).get("heads")
    if not heads_state:
        raise MedCLMError(f"{checkpoint} has no warm-up heads (trained without a vision warm-up?)")
    model = LlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    grid = patch_grid(model)
    config = MedCLMConfig.from_dict(config_meta["config"])
    heads = VisionWarmupHeads(base_llava(model).config.vision_config.hidden_size,
                              digits="digits.weight" in heads_state, box_encoding=config.dense_box_encoding)
    heads.load_state_dict(heads_state)
    objective = MedCLMObjective(model, heads, config)

    by_case = {}
    for record in load_records(data_dir / f"{split}.jsonl"):
        if record.stage != "easy":  # the clean image, as the language stages' Medium and Hard questions see it
            by_case.setdefault(record.case_id, record)
    cases = list(by_case.values())[:limit]
    if not cases:
        raise MedCLMError(f"{data_dir / f'{split}.jsonl'} has no Medium or Hard records")
    images = ImageCache(data_dir, processor.image_processor)
    found: dict[tuple[str, str], list[tuple[bool, bool]]] = {}
    box_fit: dict[str, list[tuple[float, float]]] = {}  # size -> (IoU, centre error / image side)
    digit_fit: dict[str, list[tuple[float, float]]] = {}  # the same for the box read from the digit heads
    digit_hits: dict[str, list[np.ndarray]] = {}  # size -> (4, places) right/wrong per lesion
    image_scores, image_truth = [], []
    counts, count_hits, host_hits = [], [], []
    for start in range(0, len(cases), batch_size):
        chunk = cases[start:start + batch_size]
        pixels = torch.stack([images.get(record_image_path(r), r.modality) for r in chunk])
        outputs = heads(objective.patch_features(pixels))
        scores = outputs["lesion"].reshape(len(chunk), grid, grid)
        boxes = outputs["box"].reshape(len(chunk), grid, grid, 4) * BOX_SCALE
        digits = (outputs["digits"].argmax(-1).reshape(len(chunk), grid, grid, 4, -1)
                  if "digits" in outputs else [None] * len(chunk))
        # Image-level heads were trained to give the same answer on every patch: average them over patches.
        count_guess = outputs["count"].float().softmax(-1).mean(1).argmax(-1)
        host_guess = outputs["hosts"].float().mean(1) > 0
        for record, score, box, digit, count, hosts in zip(chunk, scores, boxes, digits, count_guess, host_guess):
            true_hosts, _, true_count, _, _ = image_level_targets(record.case_findings)
            counts.append(true_count)
            count_hits.append(int(count) == true_count)
            host_hits.append(bool((hosts.numpy() == (true_hosts > 0.5)).all()))
            image_scores.append(score.max().item())
            image_truth.append(bool(record.case_findings))
            for finding in record.case_findings:
                row, col = centre_patch(finding.box, grid)  # the warm-up's own lesion-patch rule
                around = score[max(0, row - 1):row + 2, max(0, col - 1):col + 2].max().item()
                key = (size_category(finding.size_mm), record.modality)
                found.setdefault(key, []).append((score[row, col].item() > 0, around > 0))
                guess = box[row, col].tolist()
                centre_error = float(np.hypot(*centre_offset(guess, finding.box)))
                box_fit.setdefault(key[0], []).append((box_iou(guess, finding.box), centre_error / BOX_SCALE))
                if digit is not None:
                    read = digit_box(digit[row, col]).tolist()
                    error = float(np.hypot(*centre_offset(read, finding.box)))
                    digit_fit.setdefault(key[0], []).append((box_iou(read, finding.box), error / BOX_SCALE))
                    truth = box_digits(torch.tensor(finding.box, dtype=torch.float32) / BOX_SCALE)
                    digit_hits.setdefault(key[0], []).append((digit[row, col] == truth).numpy())

    def recall(size: str, modality: str | None = None, window: int = 0) -> float | None:
        hits = [h[window] for (s, m), values in found.items() for h in values
                if s == size and modality in (None, m)]
        return rate(hits)

    modalities = sorted({m for _, m in found})
    lesions = {size: {"n": sum(len(v) for (s, _), v in found.items() if s == size),
                      "centre_recall": recall(size), "window_recall": recall(size, window=1),
                      **{f"centre_recall/{m}": recall(size, m) for m in modalities},
                      **box_head_fit(box_fit.get(size, [])),
                      **(digit_head_fit(digit_fit.get(size, []), digit_hits.get(size, [])) if digit_hits else {})}
              for size in SIZES}
    scores, truth = np.array(image_scores), np.array(image_truth)
    best = max(((scores > t) == truth).mean() for t in np.concatenate([[-np.inf], np.unique(scores)]))
    image_level = None
    if config.dense_image_weight > 0:  # otherwise those heads never trained and their guesses mean nothing
        majority = max(counts.count(c) for c in set(counts)) / len(counts)
        image_level = {"count_accuracy": rate(count_hits), "count_majority_rate": round(majority, 4),
                       "host_set_exact": rate(host_hits)}
    return {"checkpoint": str(checkpoint), "images": len(cases), "lesion_rate": rate(truth.tolist()),
            "lesions": lesions, "image_accuracy": rate(((scores > 0) == truth).tolist()),
            "image_accuracy_best_threshold": round(float(best), 4), "image_level": image_level}


def digit_head_fit(fits: list[tuple[float, float]], hits: list[np.ndarray]) -> dict:
    """The box read from the digit heads at the lesion's patch (as :func:`box_head_fit`, keys ``digit_…``) and
    each digit place's accuracy over the four coordinates."""
    fit = {f"digit_{key}": value for key, value in box_head_fit(fits).items()}
    for i, place in enumerate(DIGIT_PLACES):
        fit[f"digit_acc/{place}"] = round(float(np.mean([h[:, i].mean() for h in hits])), 4) if hits else None
    return fit


def box_head_fit(fits: list[tuple[float, float]]) -> dict:
    """Acc@0.5, Acc@0.3 and the median centre error (fraction of the image side) of the box head read at
    each lesion's centre patch, from (IoU, centre error) pairs; the evaluation's grounding figures, for an
    oracle that knows the lesion's patch."""
    if not fits:
        return {"box_acc@0.5": None, "box_acc@0.3": None, "box_median_centre_error": None}
    ious = [iou for iou, _ in fits]
    return {"box_acc@0.5": rate([iou >= 0.5 for iou in ious]), "box_acc@0.3": rate([iou >= 0.3 for iou in ious]),
            "box_median_centre_error": round(float(np.median([error for _, error in fits])), 4)}
