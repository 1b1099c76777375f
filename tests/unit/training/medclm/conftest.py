"""A tiny phantom VQA dataset (12 images, built once per session) and a micro model config for fast tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.medclm.config import MedCLMConfig

# Seed 5 with 6 images per modality is a build whose hash split gives non-empty train AND val files.
TINY_BUILD = ["build", "--source", "phantom", "--modality", "ct,cxr", "--count", "6", "--seed", "5",
              "--workers", "1", "--no-progress"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Folder with train.jsonl (~150 records), val.jsonl (~15), images and organ masks."""
    from training.data.__main__ import main

    out = tmp_path_factory.mktemp("medclm_data") / "vqa"
    assert main(TINY_BUILD + ["--out", str(out)]) == 0
    assert (out / "val.jsonl").stat().st_size > 0
    return out


@pytest.fixture(scope="session")
def tiny_records(tiny_data):
    """The validated train records of the tiny dataset."""
    from training.medclm.data import load_records

    return load_records(tiny_data / "train.jsonl")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_records):
    """Tokenizer trained on the tiny dataset's corpus."""
    from training.medclm.prompts import INSTRUCTIONS
    from training.medclm.tokenizer import corpus_texts, train_tokenizer

    return train_tokenizer(corpus_texts(tiny_records, INSTRUCTIONS), vocab_size=512)


def micro_config(**changes) -> MedCLMConfig:
    """A ~0.3M-parameter LLaVA (64 px, 16 image tokens) that trains dozens of steps in seconds."""
    values = dict(image_size=64, patch_size=16, vision_hidden=64, vision_layers=2, vision_heads=2,
                  vision_intermediate=128, text_hidden=64, text_layers=2, text_heads=2, text_intermediate=128,
                  max_positions=1024, vocab_size=512, batch_size=4, questions_per_image=2, warmup_steps=4,
                  align_steps=0, easy_epochs=1.0, medium_epochs=0.5, hard_epochs=0.5, lr=3e-3, lr_warmup_steps=5,
                  eval_every=0, eval_records=2, max_new_tokens=12, log_every=1, mixed_precision="no",
                  threads=1)  # one thread: steadier than two when other jobs share the cores
    values.update(changes)
    return MedCLMConfig(**values)


@pytest.fixture
def micro():
    """Factory for micro configs with overrides."""
    return micro_config
