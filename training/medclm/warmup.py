"""Vision warm-up: a training-only dense loss on the vision tower's patch features.

Why: trained from scratch on answer-only text loss, the tower stays blind (measured: yes/no 0.70, organ
0.51, Acc@0.5 0.00 after 10 min); per-patch supervision from the organ mask and the lesion boxes teaches
it to see organs and lesions first (yes/no 0.98, organ 0.99, Acc@0.5 0.15 in 16 min).

Per patch of the features LLaVA feeds its projector (layer ``vision_feature_layer``, CLS dropped):
- organ: the majority global organ label (``training.data.anatomy``) of the patch, 0 = background;
- lesion: does a lesion box cover the patch centre (or the box centre lie in the patch, so lesions smaller
  than a patch still count);
- box: for lesion patches, that lesion's box, L1 loss: as its corners in [0, 1] (``corners``), or as detectors
  encode it (``centre_size``): the offset of its centre from the patch centre and its log width and height,
  in patch units, so the head learns where inside its own patch a lesion sits and a small lesion's error
  weighs as much as a large one's. Either way the heads also return the box as corners in [0, 1];
- digits (optional, ``dense_digit_weight``): for lesion patches, the hundreds and tens digit of each box
  coordinate in [0, 1000) as 10-way classes. The language model writes boxes digit by digit, and the tens
  digit of a coordinate is a sawtooth of it that a small MLP does not read off a regressed value (token-probe:
  tens digits at chance, docs/medclm.md run #12); as classes they are one linear read away. Measured in run
  #13: the tower learnt the hundreds but not the tens, and the language model gained nothing, so it is off;
- image-level answers on EVERY patch (weight ``dense_image_weight``): which organs host a lesion, which finding
  types are present, how many lesions (0, 1, 2, 3+), and the box of the lesion in each host organ and of each
  finding type (what the questions name a lesion by). The tower's self-attention then copies what the questions
  ask about into every image token, so the language model can read it without first learning to find the one
  lesion patch among 64 (runs that had to find it learnt to ignore the image, docs/medclm.md).

The heads are small linear probes kept outside the LLaVA module, so the exported model stays plain LLaVA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from training.data.anatomy import FINDING_TYPES, ORGANS
from training.data.boxes import BOX_SCALE
from training.data.records import VQARecord
from training.medclm.config import BOX_ENCODINGS

NUM_ORGAN_LABELS = max(o.label for o in ORGANS) + 1  # global labels 0..11
FINDING_INDEX = {f.name: i for i, f in enumerate(FINDING_TYPES)}
MAX_COUNT_CLASS = 3  # lesion counts 0, 1, 2 and "3 or more"
DIGIT_PLACES = (100, 10)  # hundreds and tens of a box coordinate; a unit is under a pixel at 128 px
IGNORE = -100


class VisionWarmupHeads(nn.Module):
    """Linear probes on patch features: organ logits, lesion logit, box (``box_encoding``, returned as corners in
    [0, 1]), and optionally box digit logits."""

    def __init__(self, hidden: int, digits: bool = False, box_encoding: str = "corners"):
        super().__init__()
        if box_encoding not in BOX_ENCODINGS:
            raise ValueError(f"box_encoding {box_encoding!r} is not one of {', '.join(BOX_ENCODINGS)}")
        self.box_encoding = box_encoding
        self.organ = nn.Linear(hidden, NUM_ORGAN_LABELS)
        self.lesion = nn.Linear(hidden, 1)
        self.box = nn.Linear(hidden, 4)
        self.hosts = nn.Linear(hidden, NUM_ORGAN_LABELS)
        self.kinds = nn.Linear(hidden, len(FINDING_TYPES))
        self.count = nn.Linear(hidden, MAX_COUNT_CLASS + 1)
        self.organ_boxes = nn.Linear(hidden, NUM_ORGAN_LABELS * 4)
        self.kind_boxes = nn.Linear(hidden, len(FINDING_TYPES) * 4)
        # Created last and only when trained, so runs without it draw the same initial weights as before.
        self.digits = nn.Linear(hidden, 4 * len(DIGIT_PLACES) * 10) if digits else None

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """features (B, P, H) → organ (B, P, L), lesion (B, P), box (B, P, 4), and the image-level answers
        per patch: hosts (B, P, L), kinds (B, P, F), count (B, P, 4) logits, organ_boxes (B, P, L, 4) and
        kind_boxes (B, P, F, 4) in [0, 1]; with digit heads also digits (B, P, 4, places, 10) logits; with the
        ``centre_size`` encoding also box_code (B, P, 4), what the box loss compares."""
        batch, patches = features.shape[:2]
        extra = {} if self.digits is None else {
            "digits": self.digits(features).view(batch, patches, 4, len(DIGIT_PLACES), 10)}
        raw_box = self.box(features).float()
        if self.box_encoding == "centre_size":
            extra["box_code"] = raw_box
            box = decode_centre_size(raw_box, square_grid(patches))
        else:
            box = torch.sigmoid(raw_box)
        return {**extra, "organ": self.organ(features), "lesion": self.lesion(features).squeeze(-1),
                "box": box, "hosts": self.hosts(features),
                "kinds": self.kinds(features), "count": self.count(features),
                "organ_boxes": torch.sigmoid(self.organ_boxes(features).float()).view(batch, patches, -1, 4),
                "kind_boxes": torch.sigmoid(self.kind_boxes(features).float()).view(batch, patches, -1, 4)}


def square_grid(patches: int) -> int:
    """The side of a square grid of ``patches`` patches."""
    grid = int(round(patches ** 0.5))
    if grid * grid != patches:
        raise ValueError(f"{patches} patches do not form a square grid")
    return grid


def patch_centres(grid: int, device=None) -> torch.Tensor:
    """(grid*grid, 2) patch centres (x, y) in [0, 1], row-major as the tower orders its patches."""
    middle = (torch.arange(grid, dtype=torch.float32, device=device) + 0.5) / grid
    return torch.stack([middle.repeat(grid), middle.repeat_interleave(grid)], dim=-1)


MIN_BOX_SIDE = 1.0 / BOX_SCALE  # a box in [0, 1000) integers is at least one unit wide where it is drawn


def encode_centre_size(boxes: torch.Tensor, grid: int) -> torch.Tensor:
    """(..., P, 4) corners in [0, 1] → (..., P, 4): centre offset from each patch's centre (x, y) and log width
    and height, all in patch units."""
    centres = patch_centres(grid, boxes.device)
    size = (boxes[..., 2:] - boxes[..., :2]).clamp_min(MIN_BOX_SIDE)
    offset = ((boxes[..., :2] + boxes[..., 2:]) / 2 - centres) * grid
    return torch.cat([offset, torch.log(size * grid)], dim=-1)


def decode_centre_size(codes: torch.Tensor, grid: int) -> torch.Tensor:
    """Inverse of :func:`encode_centre_size`, corners clamped to [0, 1]."""
    centre = patch_centres(grid, codes.device) + codes[..., :2] / grid
    half = torch.exp(codes[..., 2:].clamp(max=np.log(grid))) / grid / 2  # at most the image side
    return torch.cat([centre - half, centre + half], dim=-1).clamp(0.0, 1.0)


def organ_patch_labels(mask: np.ndarray, grid: int) -> np.ndarray:
    """(grid*grid,) majority organ label per patch of the stretch-resized mask."""
    side = grid * 8  # 8x8 votes per patch: enough resolution, cheap
    resized = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((side, side), Image.NEAREST))
    onehot = np.eye(NUM_ORGAN_LABELS, dtype=np.int32)[np.clip(resized, 0, NUM_ORGAN_LABELS - 1)]
    votes = onehot.reshape(grid, 8, grid, 8, NUM_ORGAN_LABELS).sum(axis=(1, 3))
    return votes.argmax(-1).reshape(-1).astype(np.int64)


def centre_patch(box, grid: int) -> tuple[int, int]:
    """(row, col) of the patch holding the centre of a box in [0, 1000)."""
    x1, y1, x2, y2 = box
    return min(grid - 1, int((y1 + y2) / 2000.0 * grid)), min(grid - 1, int((x1 + x2) / 2000.0 * grid))


def lesion_patch_targets(boxes: list[tuple[int, int, int, int]], grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(presence (P,), box targets (P, 4) in [0, 1]) from boxes in [0, 1000); the smallest box wins overlaps."""
    presence = np.zeros(grid * grid, dtype=np.float32)
    targets = np.zeros((grid * grid, 4), dtype=np.float32)
    centres = (np.arange(grid) + 0.5) / grid * 1000.0
    for box in sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1])):  # largest first, smallest last
        x1, y1, x2, y2 = box
        inside = (centres[None, :] >= x1) & (centres[None, :] < x2) & (centres[:, None] >= y1) & (centres[:, None] < y2)
        inside[centre_patch(box, grid)] = True
        flat = inside.reshape(-1)
        presence[flat] = 1.0
        targets[flat] = np.array(box, dtype=np.float32) / 1000.0
    return presence, targets


def box_digits(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) boxes in [0, 1] → (..., 4, places) long: each coordinate's digits in [0, BOX_SCALE) per
    DIGIT_PLACES."""
    units = torch.round(boxes * BOX_SCALE).long().clamp(0, BOX_SCALE - 1)
    return torch.stack([(units // place) % 10 for place in DIGIT_PLACES], dim=-1)


def digit_box(digits: torch.Tensor) -> torch.Tensor:
    """(..., 4, places) digit classes → (..., 4) coordinates in [0, BOX_SCALE), each at the middle of its last
    place."""
    value = sum(digits[..., i] * place for i, place in enumerate(DIGIT_PLACES))
    return value.float() + DIGIT_PLACES[-1] / 2


def image_level_targets(findings) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
    """(organs hosting a lesion, multi-hot over global labels; finding types present, multi-hot; count class;
    box per host organ (L, 4) and per finding type (F, 4) in [0, 1], zero where absent -- the largest lesion
    wins when two share an organ or a type)."""
    hosts = np.zeros(NUM_ORGAN_LABELS, dtype=np.float32)
    kinds = np.zeros(len(FINDING_TYPES), dtype=np.float32)
    organ_boxes = np.zeros((NUM_ORGAN_LABELS, 4), dtype=np.float32)
    kind_boxes = np.zeros((len(FINDING_TYPES), 4), dtype=np.float32)
    organ_label = {o.name: o.label for o in ORGANS}
    for finding in sorted(findings, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])):  # largest last
        box = np.array(finding.box, dtype=np.float32) / 1000.0
        if finding.organ in organ_label:
            hosts[organ_label[finding.organ]] = 1.0
            organ_boxes[organ_label[finding.organ]] = box
        if finding.label in FINDING_INDEX:
            kinds[FINDING_INDEX[finding.label]] = 1.0
            kind_boxes[FINDING_INDEX[finding.label]] = box
    return hosts, kinds, min(len(findings), MAX_COUNT_CLASS), organ_boxes, kind_boxes


class DenseTargetCache:
    """Per-image dense targets, computed once: organ labels (ignored without a mask), lesion, box."""

    def __init__(self, root: Path, grid: int):
        self.root = Path(root)
        self.grid = grid
        self._cache: dict[str, tuple[torch.Tensor, ...]] = {}

    def get(self, record: VQARecord) -> tuple[torch.Tensor, ...]:
        """(organ (P,) long, lesion (P,) float, box (P, 4) float, hosts (L,), kinds (F,), count ()) for the
        record's image."""
        key = record.case_id
        if key not in self._cache:
            if record.organ_mask:
                mask = np.asarray(Image.open(self.root / record.organ_mask))
                organ = organ_patch_labels(mask, self.grid)
            else:
                organ = np.full(self.grid * self.grid, IGNORE, dtype=np.int64)
            presence, boxes = lesion_patch_targets([f.box for f in record.case_findings], self.grid)
            hosts, kinds, count, organ_boxes, kind_boxes = image_level_targets(record.case_findings)
            self._cache[key] = (torch.from_numpy(organ), torch.from_numpy(presence), torch.from_numpy(boxes),
                                torch.from_numpy(hosts), torch.from_numpy(kinds), torch.tensor(count),
                                torch.from_numpy(organ_boxes), torch.from_numpy(kind_boxes))
        return self._cache[key]

    def batch(self, records: list[VQARecord]) -> dict[str, torch.Tensor]:
        """Stacked targets for the first record of each sequence (all turns share the image)."""
        names = ("organ", "lesion", "box", "hosts", "kinds", "count", "organ_boxes", "kind_boxes")
        return {name: torch.stack(values) for name, values in zip(names, zip(*(self.get(r) for r in records)))}


def dense_loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], organ_weight: float,
               lesion_weight: float, box_weight: float, pos_weight: float, image_weight: float = 0.0,
               digit_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Weighted sum of organ CE, lesion BCE and box L1 (on lesion patches only, in the heads' box encoding),
    plus ``digit_weight`` x the box digits' CE on lesion patches, plus ``image_weight`` x the image-level
    answers predicted from every patch (hosts and kinds BCE, count CE); returns (loss, parts)."""
    organ_logits = outputs["organ"].float()
    organ_ce = nn.functional.cross_entropy(organ_logits.reshape(-1, organ_logits.shape[-1]),
                                           targets["organ"].reshape(-1), ignore_index=IGNORE)
    if torch.isnan(organ_ce):  # every label ignored (no masks in this batch)
        organ_ce = organ_logits.sum() * 0.0
    lesion_bce = nn.functional.binary_cross_entropy_with_logits(
        outputs["lesion"].float(), targets["lesion"], pos_weight=torch.tensor(pos_weight))
    positive = targets["lesion"] > 0
    if positive.any():
        if "box_code" in outputs:  # centre_size: compared in the encoded space
            predicted = outputs["box_code"][positive]
            truth = encode_centre_size(targets["box"], square_grid(targets["box"].shape[1]))[positive]
        else:
            predicted, truth = outputs["box"][positive], targets["box"][positive]
        box_l1 = (predicted - truth).abs().mean()
    else:
        box_l1 = outputs["box"].sum() * 0.0
    loss = organ_weight * organ_ce + lesion_weight * lesion_bce + box_weight * box_l1
    digit_parts = {}
    if digit_weight > 0 and "digits" in outputs:
        if positive.any():
            logits = outputs["digits"][positive].float()  # (N, 4, places, 10)
            truth = box_digits(targets["box"][positive])
            digit_ce = nn.functional.cross_entropy(logits.reshape(-1, 10), truth.reshape(-1))
            digit_parts = {"digit_ce": digit_ce.item(),
                           "tens_acc": (logits.argmax(-1) == truth)[..., -1].float().mean().item()}
        else:
            digit_ce = outputs["digits"].sum() * 0.0
        loss = loss + digit_weight * digit_ce
    image_parts = {}
    if image_weight > 0 and "hosts" in targets:
        patches = outputs["hosts"].shape[1]
        hosts_bce = nn.functional.binary_cross_entropy_with_logits(
            outputs["hosts"].float(), targets["hosts"][:, None].expand(-1, patches, -1))
        kinds_bce = nn.functional.binary_cross_entropy_with_logits(
            outputs["kinds"].float(), targets["kinds"][:, None].expand(-1, patches, -1))
        count_logits = outputs["count"].float()
        count_ce = nn.functional.cross_entropy(count_logits.reshape(-1, count_logits.shape[-1]),
                                               targets["count"][:, None].expand(-1, patches).reshape(-1))
        boxes_l1 = (_masked_box_l1(outputs["organ_boxes"], targets["organ_boxes"], targets["hosts"])
                    + _masked_box_l1(outputs["kind_boxes"], targets["kind_boxes"], targets["kinds"]))
        loss = loss + image_weight * (hosts_bce + kinds_bce + count_ce + box_weight * boxes_l1)
        with torch.no_grad():  # exact match of the host-organ set, read from every patch
            hosts_hit = ((outputs["hosts"] > 0).float() == targets["hosts"][:, None]).all(-1).float().mean()
        image_parts = {"hosts_bce": hosts_bce.item(), "count_ce": count_ce.item(), "hosts_acc": hosts_hit.item(),
                       "image_box_l1": boxes_l1.item()}
    with torch.no_grad():
        valid = targets["organ"] != IGNORE
        organ_acc = ((organ_logits.argmax(-1) == targets["organ"]) & valid).sum() / valid.sum().clamp_min(1)
        predicted = outputs["lesion"] > 0
        recall = (predicted & positive).sum() / positive.sum().clamp_min(1)
    parts = {"organ_ce": organ_ce.item(), "lesion_bce": lesion_bce.item(), "box_l1": box_l1.item(),
             "organ_acc": organ_acc.item(), "lesion_recall": recall.item(), **digit_parts, **image_parts}
    return loss, parts


def _masked_box_l1(predicted: torch.Tensor, target: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean L1 of (B, P, K, 4) box predictions against (B, K, 4) targets where ``present`` (B, K) is 1."""
    mask = present[:, None, :, None].expand_as(predicted)
    if not mask.any():
        return predicted.sum() * 0.0
    return (predicted - target[:, None]).abs()[mask > 0].mean()
