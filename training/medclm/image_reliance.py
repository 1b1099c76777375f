"""Does the language model read the image? Teacher-forced loss with each question's own image, with another
image, and with a blank one.

If the loss with another image equals the loss with the right one, the model answers from the question
text alone (measured on runs #3–#5, docs/medclm.md). One question per image, so "another image" is always a
different case.
"""

from __future__ import annotations

from pathlib import Path

import torch

from training.medclm.data import ImageCache, collate, load_records, record_image_path, tokenize_turns
from training.medclm.errors import MedCLMError
from training.medclm.model import patch_grid
from training.medclm.objective import MedCLMObjective

QUESTION_TYPES = ("organ", "presence", "finding", "grounding", "side", "count", "size")


@torch.no_grad()
def image_reliance(checkpoint: Path, data_dir: Path, split: str = "val", count: int = 32,
                   stage: str = "hard") -> dict:
    """{'own': loss, 'other': loss with images rolled by one, 'blank': loss with zero pixels, 'n': count}."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from training.medclm.config import MedCLMConfig
    from training.medclm.checkpoint import read_meta

    checkpoint, data_dir = Path(checkpoint), Path(data_dir)
    model = LlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    config = MedCLMConfig.from_dict(read_meta(checkpoint)["config"])
    seen, records = set(), []
    for record in load_records(data_dir / f"{split}.jsonl"):
        if record.stage == stage and record.case_id not in seen and record.question_type in QUESTION_TYPES:
            seen.add(record.case_id)
            records.append(record)
        if len(records) == count:
            break
    if len(records) < 2:
        raise MedCLMError(f"{split}.jsonl has fewer than two {stage} questions on different images")
    grid = patch_grid(model)
    batch = collate([tokenize_turns(processor.tokenizer, [r], grid * grid, config.answer_weight,
                                    config.reasoning_weight) for r in records], processor.tokenizer.pad_token_id)
    images = ImageCache(data_dir, processor.image_processor)
    pixels = torch.stack([images.get(record_image_path(r), r.modality) for r in records])
    objective = MedCLMObjective(model, None, config)

    def loss(values: torch.Tensor) -> float:
        return round(float(objective(values, batch["input_ids"], batch["attention_mask"], batch["weights"])["lm"]), 4)

    return {"n": len(records), "own": loss(pixels), "other": loss(torch.roll(pixels, 1, 0)),
            "blank": loss(torch.zeros_like(pixels))}
