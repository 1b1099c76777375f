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
from training.medclm.warmup import VisionWarmupHeads, centre_patch, image_level_targets


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
    heads = VisionWarmupHeads(base_llava(model).config.vision_config.hidden_size)
    heads.load_state_dict(heads_state)
    config = MedCLMConfig.from_dict(config_meta["config"])
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
    image_scores, image_truth = [], []
    counts, count_hits, host_hits = [], [], []
    for start in range(0, len(cases), batch_size):
        chunk = cases[start:start + batch_size]
        pixels = torch.stack([images.get(record_image_path(r), r.modality) for r in chunk])
        outputs = heads(objective.patch_features(pixels))
        scores = outputs["lesion"].reshape(len(chunk), grid, grid)
        boxes = outputs["box"].reshape(len(chunk), grid, grid, 4) * BOX_SCALE
        # Image-level heads were trained to give the same answer on every patch: average them over patches.
        count_guess = outputs["count"].float().softmax(-1).mean(1).argmax(-1)
        host_guess = outputs["hosts"].float().mean(1) > 0
        for record, score, box, count, hosts in zip(chunk, scores, boxes, count_guess, host_guess):
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

    def recall(size: str, modality: str | None = None, window: int = 0) -> float | None:
        hits = [h[window] for (s, m), values in found.items() for h in values
                if s == size and modality in (None, m)]
        return rate(hits)

    modalities = sorted({m for _, m in found})
    lesions = {size: {"n": sum(len(v) for (s, _), v in found.items() if s == size),
                      "centre_recall": recall(size), "window_recall": recall(size, window=1),
                      **{f"centre_recall/{m}": recall(size, m) for m in modalities},
                      **box_head_fit(box_fit.get(size, []))} for size in SIZES}
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


def box_head_fit(fits: list[tuple[float, float]]) -> dict:
    """Acc@0.5, Acc@0.3 and the median centre error (fraction of the image side) of the box head read at
    each lesion's centre patch, from (IoU, centre error) pairs; the evaluation's grounding figures, for an
    oracle that knows the lesion's patch."""
    if not fits:
        return {"box_acc@0.5": None, "box_acc@0.3": None, "box_median_centre_error": None}
    ious = [iou for iou, _ in fits]
    return {"box_acc@0.5": rate([iou >= 0.5 for iou in ious]), "box_acc@0.3": rate([iou >= 0.3 for iou in ious]),
            "box_median_centre_error": round(float(np.median([error for _, error in fits])), 4)}
