"""Dataset loading with up-front checks, model-view images, and token sequences with per-token loss weights.

A training sequence is one image followed by one or more question/answer turns about it (all of one
stage). The target of every turn is IN the input (teacher forcing), the loss covers target tokens only,
with ``answer_weight`` on the "Answer: X" line plus the closing EOS and ``reasoning_weight`` on the
reasoning steps. Hard targets have no reasoning: their tokens are all answer tokens, so the loss is never
empty (the reference code looked for "\\n\\nAnswer:", which Hard targets lack, and its collate dropped the
target from the input altogether).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydantic import ValidationError

from training.data.boxes import snap_box, snap_boxes
from training.data.drawing import load_model_image  # noqa: F401  (re-exported: trainer, evaluator, engines)
from training.data.rationale import format_target
from training.data.records import VQARecord
from training.medclm.errors import MedCLMError
from training.medclm.prompts import build_messages, render_prompt

SPLIT_FILES = ("train.jsonl", "val.jsonl", "test.jsonl")
ANSWER_MARK = "Answer:"


def load_records(path: Path) -> list[VQARecord]:
    """Every line of a ``*.jsonl`` file as a validated :class:`VQARecord`; the first bad line is an error."""
    path = Path(path)
    if not path.is_file():
        raise MedCLMError(f"data file {path} does not exist (build one with `python -m training.data build`)")
    records = []
    with path.open() as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(VQARecord.model_validate(json.loads(line)))
            except json.JSONDecodeError as exc:
                raise MedCLMError(f"{path} line {line_no}: not valid JSON ({exc})") from exc
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "record"
                raise MedCLMError(f"{path} line {line_no}: record fails the schema at {where}: {first['msg']}"
                                  ) from exc
    if not records:
        raise MedCLMError(f"data file {path} holds no records")
    return records


def check_images(data_dir: Path, records: list[VQARecord], need_masks: bool) -> None:
    """Every image (and organ mask, when the dense warm-up needs it) a record names must exist on disk."""
    seen: set[str] = set()
    for record in records:
        names = [record.image, record.image_easy] + ([record.organ_mask] if need_masks and record.organ_mask else [])
        for rel in names:
            if rel in seen:
                continue
            seen.add(rel)
            if not (data_dir / rel).is_file():
                raise MedCLMError(f"record {record.id}: image {data_dir / rel} is missing on disk")


def data_fingerprint(data_dir: Path) -> str:
    """sha256 over the split files (names and bytes): recorded in checkpoints, compared on resume."""
    digest = hashlib.sha256()
    for name in SPLIT_FILES:
        path = Path(data_dir) / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass
class Dataset:
    """The checked train and val records of one dataset folder."""

    root: Path
    train: list[VQARecord]
    val: list[VQARecord]
    fingerprint: str


def load_dataset(data_dir: Path, need_masks: bool = True) -> Dataset:
    """Load and check train/val before any training: files, schema, images on disk."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise MedCLMError(f"data folder {data_dir} does not exist")
    train = load_records(data_dir / "train.jsonl")
    val = load_records(data_dir / "val.jsonl")
    check_images(data_dir, train + val, need_masks)
    return Dataset(data_dir, train, val, data_fingerprint(data_dir))


def snap_record_boxes(record: VQARecord, cells: int) -> VQARecord:
    """``record`` with every box on a grid of ``cells`` lines per side, as ``box_tokens: pixels`` trains.

    Question (Easy gives the box), rationale, answer, target and findings move together, and the record is
    validated again, so it stays as consistent as the data engine wrote it.
    """
    data = record.model_dump()
    data["question"] = snap_boxes(data["question"], cells)
    data["rationale"] = [snap_boxes(step, cells) for step in data["rationale"]]
    data["answer"] = snap_boxes(data["answer"], cells)
    data["target"] = format_target(data["stage"], data["rationale"], data["answer"])
    for finding in data["findings"] + data["case_findings"]:
        finding["box"] = snap_box(finding["box"], cells)
    return VQARecord.model_validate(data)


def snap_dataset_boxes(dataset: Dataset, cells: int) -> Dataset:
    """Apply :func:`snap_record_boxes` to ``dataset``'s train and val records in place; returns ``dataset``.

    Record by record, so that each old record is freed as its snapped copy is made: two whole copies of the
    `long` preset's 280,000 records raised the start-up peak RSS by 1.1 GiB.
    """
    for records in (dataset.train, dataset.val):
        for i, record in enumerate(records):
            records[i] = snap_record_boxes(record, cells)
    return dataset


def record_image_path(record: VQARecord) -> str:
    """Easy records show the copy with boxes drawn; Medium and Hard the clean image."""
    return record.image_easy if record.stage == "easy" else record.image


class ImageCache:
    """Preprocessed ``pixel_values`` per image file, computed once with the checkpoint's image processor.

    Why not cache the processor's floats: a 20,000-phantom run holds about 33,000 images (clean and Easy copies),
    3.2 GB even in bf16. Held here instead: the resized 8-bit pixels (one channel when the image is gray),
    turned into the processor's values on each ``get`` through a 256-entry table per channel, which is
    exact because rescaling and normalising act on each pixel value alone. A processor for which that does
    not hold (checked on the first image) gets its float output cached as it is.
    """

    def __init__(self, root: Path, image_processor):
        self.root = Path(root)
        self.image_processor = image_processor
        self._cache: dict[str, torch.Tensor] = {}
        self._table: torch.Tensor | None = None  # (3, 256) processor value per channel and 8-bit value
        self._compact: bool | None = None  # None until checked on the first image

    def _raw_pixels(self, image) -> torch.Tensor:
        return self.image_processor(images=image, do_rescale=False, do_normalize=False,
                                    return_tensors="pt")["pixel_values"][0]

    def _lookup(self, pixels: torch.Tensor) -> torch.Tensor:
        """(1 or 3, S, S) uint8 → (3, S, S) processor values, in one flat gather."""
        index = pixels.long() + torch.arange(0, 3 * 256, 256).view(3, 1, 1)
        return self._table.view(-1).index_select(0, index.view(-1)).view(index.shape)

    def _check_compact(self, image) -> bool:
        """Is the table exact for this processor? Compares it once with the processor's own output."""
        raw = self._raw_pixels(image)
        if raw.dtype != torch.uint8 and not torch.equal(raw, raw.round().clamp(0, 255)):
            return False
        ramp = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(1, 256)).convert("RGB")
        self._table = self.image_processor(images=ramp, do_resize=False, do_center_crop=False,
                                           return_tensors="pt")["pixel_values"][0][:, 0, :].float().contiguous()
        full = self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        return self._table.shape == (3, 256) and torch.equal(self._lookup(raw.to(torch.uint8)), full)

    def get(self, rel: str, modality: str) -> torch.Tensor:
        """(3, S, S) float tensor for the image at ``rel``, equal to the image processor's output."""
        if rel not in self._cache:
            image = load_model_image(self.root / rel, modality)
            if self._compact is None:
                self._compact = self._check_compact(image)
            if self._compact:
                pixels = self._raw_pixels(image).to(torch.uint8)
                gray = torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[0], pixels[2])
                self._cache[rel] = pixels[:1].clone() if gray else pixels
            else:
                self._cache[rel] = self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        cached = self._cache[rel]
        return self._lookup(cached) if self._compact else cached.clone()


@dataclass
class TokenizedSequence:
    """One training sequence: ids with the image placeholder expanded, and a loss weight per token.

    ``weights[i]`` weighs the prediction OF token i (from position i-1): 0 for prompt and image tokens,
    ``answer_weight`` for the "Answer: X" line and EOS, ``reasoning_weight`` for the reasoning.
    """

    input_ids: list[int]
    weights: list[float]
    kinds: list[str] = field(default_factory=list)  # "prompt" | "image" | "reasoning" | "answer", for tests
    text: str = ""  # the rendered conversation the ids encode
    starts: list[int] = field(default_factory=list)  # character offset in ``text`` per token, -1 for image tokens


def tokenize_turns(tokenizer, records: list[VQARecord], image_tokens: int, answer_weight: float,
                   reasoning_weight: float) -> TokenizedSequence:
    """Render the records as consecutive chat turns about one image and weight the target tokens.

    Spans are found on the rendered text (chat template), then mapped to tokens through the fast
    tokenizer's offsets, so this works for any chat template, not only ours.
    """
    if image_tokens < 1:
        raise ValueError("image_tokens must be >= 1")
    messages: list[dict] = []
    spans: list[tuple[int, int, int]] = []  # (target start, answer start, turn end) in characters
    for index, record in enumerate(records):
        turn = build_messages(record.question, reasoning=record.stage != "hard", with_image=index == 0,
                              target=record.target)
        messages.append(turn[0])
        prompt = render_prompt(tokenizer, messages, add_generation_prompt=True)
        messages.append(turn[1])
        full = render_prompt(tokenizer, messages, add_generation_prompt=False)
        if not full.startswith(prompt):
            raise MedCLMError("chat template is not prefix-stable: a prompt is not a prefix of its conversation")
        target_at = full.find(record.target, len(prompt))
        if target_at < 0:
            raise MedCLMError("chat template does not render the assistant target verbatim")
        answer_offset = record.target.rfind(ANSWER_MARK)
        answer_at = target_at + max(answer_offset, 0)  # no marker: the whole target is answer
        spans.append((len(prompt), answer_at, len(full)))
    text = render_prompt(tokenizer, messages, add_generation_prompt=False)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    image_id = tokenizer.convert_tokens_to_ids(tokenizer.image_token if hasattr(tokenizer, "image_token")
                                               else "<image>")
    ids: list[int] = []
    weights: list[float] = []
    kinds: list[str] = []
    starts: list[int] = []
    for token_id, (start, _end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        if token_id == image_id:
            ids += [token_id] * image_tokens
            weights += [0.0] * image_tokens
            kinds += ["image"] * image_tokens
            starts += [-1] * image_tokens
            continue
        kind, weight = "prompt", 0.0
        for target_start, answer_start, turn_end in spans:
            if target_start <= start < turn_end:
                kind, weight = (("answer", answer_weight) if start >= answer_start
                                else ("reasoning", reasoning_weight))
        ids.append(token_id)
        weights.append(weight)
        kinds.append(kind)
        starts.append(start)
    return TokenizedSequence(ids, weights, kinds, text, starts)


@dataclass
class SequencePlan:
    """Records that form one sequence: same stage, same model-view image."""

    records: list[VQARecord]

    @property
    def stage(self) -> str:
        """The curriculum stage shared by the sequence's records."""
        return self.records[0].stage

    @property
    def image(self) -> str:
        """The image file the sequence shows."""
        return record_image_path(self.records[0])


def plan_sequences(records: list[VQARecord], questions_per_image: int, rng: np.random.Generator,
                   ) -> list[SequencePlan]:
    """Group records by (stage, image) in a random order and cut each group into sequences of <= N turns."""
    groups: dict[tuple[str, str], list[VQARecord]] = {}
    for record in records:
        groups.setdefault((record.stage, record_image_path(record)), []).append(record)
    plans = []
    for key in sorted(groups):
        group = groups[key]
        order = rng.permutation(len(group))
        for start in range(0, len(group), questions_per_image):
            plans.append(SequencePlan([group[i] for i in order[start:start + questions_per_image]]))
    rng.shuffle(plans)
    return plans


def collate(sequences: list[TokenizedSequence], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence: ``input_ids``, ``attention_mask``, ``weights`` (0 on padding)."""
    length = max(len(s.input_ids) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    weights = torch.zeros((len(sequences), length), dtype=torch.float32)
    for row, seq in enumerate(sequences):
        n = len(seq.input_ids)
        ids[row, :n] = torch.tensor(seq.input_ids)
        mask[row, :n] = 1
        weights[row, :n] = torch.tensor(seq.weights)
    return {"input_ids": ids, "attention_mask": mask, "weights": weights}


def weighted_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, weights: torch.Tensor,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted next-token cross-entropy: sum(w * CE) / sum(w), per sequence and over the batch.

    Returns (batch loss, per-sequence loss). Position i predicts token i+1 with weight ``weights[i+1]``.
    A batch with no weighted token gives a zero loss that still has a graph, never NaN.
    """
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:]
    w = weights[:, 1:].to(logits.dtype)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                           reduction="none").view_as(w)
    per_sequence = (ce * w).sum(1) / w.sum(1).clamp_min(1e-8)
    total = (ce * w).sum() / w.sum().clamp_min(1e-8)
    return total, per_sequence
