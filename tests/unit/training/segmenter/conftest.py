"""One tiny segmenter trained once per session (through the CLI) and its ONNX variants, for the tests that
need a real model; the committed default models are used where accuracy matters."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[4]
DEFAULT_REPOSITORY = REPO_ROOT / "model_repository"

# 64x64 input, two levels, 16 phantoms, 1 epoch: a few seconds on 2 cores, yet a real trained network.
TINY_OVERRIDES = ["--count=16", "--epochs=1", "--widths=[8,16]", "--input_size=64", "--batch_size=4"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """Directory holding checkpoint.pt and metrics.json of a tiny CT model."""
    from training.segmenter.__main__ import main

    out = tmp_path_factory.mktemp("tiny_ct")
    assert main(["train", "--modality", "ct", "--out", str(out), "--no-progress", *TINY_OVERRIDES]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tiny_run) -> dict[str, Path]:
    """fp32 export of the tiny model plus its fp16 and int8 variants."""
    from training.segmenter.checkpoint import load_checkpoint
    from training.segmenter.dataset import load_cases, split_cases
    from training.segmenter.export import export_onnx
    from training.segmenter.pipeline import network_inputs
    from training.segmenter.quantize import convert_fp16, quantize_int8

    model, config, spec = load_checkpoint(tiny_run / "checkpoint.pt")
    fp32 = export_onnx(model, config, spec, tiny_run / "fp32.onnx")
    train_cases = split_cases(load_cases("ct", None, config.count, config.data_seed, False), config.test_percent)[0]
    return {"fp32": fp32, "fp16": convert_fp16(fp32, tiny_run / "fp16.onnx"),
            "int8": quantize_int8(fp32, tiny_run / "int8.onnx", network_inputs(train_cases, spec, 8))}


@pytest.fixture(scope="session")
def default_repository() -> Path:
    """The committed model_repository; its absence is a failure, since the default models ship with the repo."""
    assert (DEFAULT_REPOSITORY / "organ_seg_ct" / "1" / "model.onnx").is_file(), \
        "the committed default models are missing: python -m training.segmenter build-defaults"
    return DEFAULT_REPOSITORY
