"""A model repository holding a servable ``medclm`` for service tests, plus a question and image to ask.

No MedCLM checkpoint is committed yet. When ``model_repository/medclm`` exists in the repository it is used
as is; otherwise a micro model is trained once per session on the unit tests' tiny phantom dataset with the
real trainer and exported with the real exporter, exactly as ``make medclm-default`` does at full size.
The dataset, its build arguments and the micro config come from the MedCLM unit tests' conftest, so there is
one definition of "the tiny model" in the tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from tests.unit.training.medclm.conftest import TINY_BUILD, micro_config

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED_REPOSITORY = REPO_ROOT / "model_repository"
MODEL_NAME = "medclm"
REFERENCE_MAX_TOKENS = 32  # long enough to compare real text, short enough for one CPU core


@dataclass
class ReferenceGeneration:
    """Greedy output of transformers for a sample: what every engine must reproduce token for token."""

    text: str
    completion_tokens: int  # generated ids including the EOS, as vLLM counts them
    prompt_tokens: int  # prompt ids with the image placeholder expanded, as vLLM counts them
    max_tokens: int
    finish_reason: str  # stop (ended with EOS) | length


@dataclass
class VqaSample:
    """One question about one image, as the service would hand it to a VQA engine."""

    question: str
    reasoning: bool
    image: Image.Image  # RGB, as the model sees it
    modality: str


def build_tiny_dataset(out: Path) -> Path:
    """The unit tests' tiny phantom VQA dataset (12 images) written to ``out``; returns ``out``."""
    from training.data.__main__ import main

    if main(TINY_BUILD + ["--out", str(out)]) != 0:
        raise RuntimeError(f"building the tiny phantom dataset into {out} failed")
    return out


def train_micro_repository(data: Path, workdir: Path) -> Path:
    """Train the micro MedCLM on ``data`` and export it (fp32) into ``workdir/model_repository``."""
    from training.medclm.export import export_model
    from training.medclm.trainer import train

    config = micro_config(easy_epochs=2.0, medium_epochs=0.5, hard_epochs=0.25, eval_records=0, replay=0.0)
    result = train(config, data, workdir / "run", progress=False)
    repository = workdir / "model_repository"
    export_model(result.checkpoints[-1], repository, MODEL_NAME, "fp32", root=workdir)
    return repository


def committed_repository() -> Path | None:
    """``model_repository/`` when it holds an exported ``medclm``, else None."""
    return COMMITTED_REPOSITORY if (COMMITTED_REPOSITORY / MODEL_NAME / "1" / "model.json").is_file() else None


def sample_from_dataset(data: Path) -> VqaSample:
    """The first validation question that asks for reasoning, with its image as the model sees it."""
    from training.medclm.data import load_model_image, load_records, record_image_path

    records = load_records(data / "val.jsonl") + load_records(data / "train.jsonl")
    record = next(r for r in records if r.stage != "hard")
    return VqaSample(record.question, True, load_model_image(data / record_image_path(record), record.modality),
                     record.modality)


def checkpoint_of(repository: Path, name: str = MODEL_NAME) -> Path:
    """The checkpoint folder a repository model's ``model.json`` points to, found as the service finds it."""
    from training.medclm.export import read_engine_args

    return Path(read_engine_args(Path(repository) / name, root=Path(repository).resolve().parent)["model"])


def transformers_reference(checkpoint: Path, sample: VqaSample, max_tokens: int) -> ReferenceGeneration:
    """Greedy generation of ``sample`` with transformers (the checkpoint's own chat template and processor)."""
    from training.medclm.engines import PromptRequest, TransformersGenerator
    from training.medclm.prompts import build_messages, render_prompt

    generator = TransformersGenerator(checkpoint, dtype="float32", threads=1, batch_size=1)
    try:
        prompt = render_prompt(generator.tokenizer, build_messages(sample.question, reasoning=sample.reasoning))
        (generation,) = generator.generate([PromptRequest(prompt, sample.image)], max_tokens)
        prompt_ids = generator.processor(text=[prompt], images=[sample.image], return_tensors="pt")["input_ids"]
        ended = generator.tokenizer.eos_token_id in generation.token_ids
    finally:
        generator.close()
    return ReferenceGeneration(generation.text, len(generation.token_ids), int(prompt_ids.shape[1]), max_tokens,
                               "stop" if ended else "length")


@pytest.fixture(scope="session")
def medclm_dataset(tmp_path_factory) -> Path:
    """The tiny phantom dataset, built once per session (questions and images for the service tests)."""
    return build_tiny_dataset(tmp_path_factory.mktemp("medclm_service_data") / "vqa")


@pytest.fixture(scope="session")
def medclm_repository(medclm_dataset, tmp_path_factory) -> Path:
    """A model repository folder containing ``medclm``: the committed one, or a micro model trained now."""
    return committed_repository() or train_micro_repository(medclm_dataset,
                                                            tmp_path_factory.mktemp("medclm_service_model"))


@pytest.fixture(scope="session")
def medclm_sample(medclm_dataset) -> VqaSample:
    """A reasoning question with its model-view image from the tiny dataset."""
    return sample_from_dataset(medclm_dataset)


@pytest.fixture(scope="session")
def medclm_reference(medclm_repository, medclm_sample) -> ReferenceGeneration:
    """Transformers' greedy answer to ``medclm_sample`` from the repository's ``medclm`` checkpoint."""
    return transformers_reference(checkpoint_of(medclm_repository), medclm_sample, REFERENCE_MAX_TOKENS)


# --- a model that answers known questions exactly -------------------------------------------------------------
# The committed default model does not yet produce usable boxes (docs/medclm.md), so service tests that
# check the box path end to end (model text → parsed box → original pixels → grounding) serve a micro model
# trained until it reproduces its few training targets verbatim: its answers, boxes included, are known.
@dataclass
class MemorisedQuestion:
    """A question the memorising model answers with its training target; the lesion box is known."""

    record: object  # VQARecord
    image_path: Path


def memorised_records(data: Path) -> list:
    """Two Medium records with a lesion box: a CT one (256 x 256) and a non-square chest X-ray one."""
    from training.medclm.data import load_records

    records = load_records(data / "train.jsonl")
    pick = []
    for modality, types in (("ct", ("organ", "finding")), ("cxr", ("grounding",))):
        pick.append(next(r for r in records if r.stage == "medium" and r.modality == modality and r.findings
                         and r.question_type in types and r.width != 0))
    return pick


def train_memorising_repository(data: Path, workdir: Path) -> Path:
    """Train the micro LLaVA on two records until it reproduces them; export it as ``medclm``."""
    import shutil

    from training.medclm.export import export_model
    from training.medclm.trainer import train

    records = memorised_records(data)
    subset = workdir / "data"
    subset.mkdir(parents=True)
    for name in ("images", "masks"):
        (subset / name).symlink_to(data / name)
    lines = "".join(r.model_dump_json() + "\n" for r in records)
    (subset / "train.jsonl").write_text(lines)
    (subset / "val.jsonl").write_text(lines)
    config = micro_config(warmup_steps=0, align_steps=0, easy_epochs=0, medium_epochs=150, hard_epochs=0,
                          questions_per_image=1, batch_size=2, lr=3e-3, dense_weight=0.0, eval_records=0, replay=0.0,
                          max_new_tokens=200)
    result = train(config, subset, workdir / "run", progress=False)
    repository = workdir / "model_repository"
    export_model(result.checkpoints[-1], repository, MODEL_NAME, "fp32", root=workdir)
    shutil.rmtree(workdir / "run", ignore_errors=True)
    return repository


@pytest.fixture(scope="session")
def memorising_repository(medclm_dataset, tmp_path_factory) -> Path:
    """A repository whose ``medclm`` answers :func:`memorised_records` with their exact targets."""
    return train_memorising_repository(medclm_dataset, tmp_path_factory.mktemp("medclm_memorising"))


@pytest.fixture(scope="session")
def memorised(medclm_dataset) -> list:
    """The records the memorising model knows by heart."""
    return memorised_records(medclm_dataset)
