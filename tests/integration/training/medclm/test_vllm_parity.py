"""The exported model runs in vLLM exactly as in transformers, and its model_repository folder is complete.

vLLM is loaded ONCE for the module (in-process engine, fp32, eager) from the exported folder, as the
service and Triton's vLLM backend would load it.
"""

from __future__ import annotations

import json

import pytest

from training.medclm.checkpoint import FORMAT, META_FILE, STATE_FILE
from training.medclm.data import load_records
from training.medclm.engines import TransformersGenerator, VllmGenerator, record_requests
from training.medclm.export import read_engine_args, verify_model_dir

MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def repository(tiny_checkpoint, tmp_path_factory):
    """A model repository with the fp32 export of the micro checkpoint."""
    from training.medclm.export import export_model

    repo = tmp_path_factory.mktemp("model_repository")
    export_model(tiny_checkpoint, repo, "medclm", "fp32", root=repo.parent)
    return repo


@pytest.fixture(scope="module")
def exported(repository):
    """The exported checkpoint folder, found through model.json like the service finds it."""
    from pathlib import Path

    return Path(read_engine_args(repository / "medclm", root=repository.parent)["model"])


@pytest.fixture(scope="module")
def vllm_engine(exported):
    """One in-process vLLM engine (fp32, enforce_eager) for every test of the module."""
    engine = VllmGenerator(exported, dtype="float32", threads=1)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def requests(tiny_data, exported):
    """Three val prompts with images: reasoning and brief prompts, both modalities when present."""
    from transformers import AutoTokenizer

    records = load_records(tiny_data / "val.jsonl")
    chosen = [next(r for r in records if r.stage == "medium"), next(r for r in records if r.stage == "hard")]
    chosen.append(next((r for r in records if r.modality != chosen[0].modality), records[-1]))
    return record_requests(AutoTokenizer.from_pretrained(exported), tiny_data, chosen)


def test_vllm_greedy_matches_transformers_token_for_token(vllm_engine, exported, requests):
    from_vllm = vllm_engine.generate(requests, MAX_NEW_TOKENS)
    reference = TransformersGenerator(exported, dtype="float32", threads=1, batch_size=1)  # no padding effects
    from_hf = reference.generate(requests, MAX_NEW_TOKENS)
    assert len(from_vllm) == len(from_hf) == len(requests) >= 2
    assert max(len(g.token_ids) for g in from_vllm) >= 8  # a real comparison, not two immediate EOS
    for ours, theirs in zip(from_vllm, from_hf):
        assert ours.token_ids, "vLLM generated nothing"
        assert ours.token_ids == theirs.token_ids, (ours.text, theirs.text)
        assert ours.text == theirs.text


def test_evaluation_through_the_loaded_engine(vllm_engine, exported, tiny_data):
    from training.medclm.eval_report import evaluate_checkpoint, render_markdown

    report = evaluate_checkpoint(exported, tiny_data, split="val", limit=2, max_new_tokens=16,
                                 generator=vllm_engine)
    assert report["reasoning"]["overall"]["n"] >= 1 and report["brief"]["overall"]["n"] >= 1
    assert report["timing"]["generated_tokens"] > 0 and report["timing"]["tokens_per_second"] > 0
    for key in ("closed_accuracy", "open_accuracy", "grounding_acc@0.5", "grounding_acc@0.3",
                "rationale_consistency", "format_validity", "median_centre_error_mm"):
        assert key in report["reasoning"]["overall"]
    assert set(report["reasoning"]["by_modality"]) <= {"ct", "cxr"}
    assert "| overall |" in render_markdown(report)


def test_exported_repository_layout_is_complete(repository, exported, tiny_checkpoint):
    from vllm.engine.arg_utils import AsyncEngineArgs

    folder = repository / "medclm"
    engine_args = json.loads((folder / "1" / "model.json").read_text())
    AsyncEngineArgs(**engine_args)  # exactly what Triton's vLLM backend does with model.json
    assert engine_args["dtype"] == "float32" and engine_args["enforce_eager"] is True
    assert engine_args["limit_mm_per_prompt"] == {"image": 1} and engine_args["max_model_len"] > 64
    assert not engine_args["model"].startswith("/")  # relative to the server's start folder: portable
    config = (folder / "config.pbtxt").read_text()
    assert 'backend: "vllm"' in config and "KIND_MODEL" in config and 'name: "medclm"' in config
    assert not (exported / STATE_FILE).exists() and (tiny_checkpoint / STATE_FILE).exists()
    meta = json.loads((exported / META_FILE).read_text())
    assert meta["format"] == FORMAT and meta["stage"] == "hard" and len(meta["data_fingerprint"]) == 64
    assert meta["config"]["text_hidden"] == 64 and "figures" in meta
    assert meta["export"]["precision"] == "fp32" and meta["export"]["storage_dtype"] == "float16"
    assert verify_model_dir(folder, root=repository.parent)["export"]["model"] == "medclm"
