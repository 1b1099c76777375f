"""evaluate / export / quantize / bench refuse bad input with one clear line, before any engine loads."""

from __future__ import annotations

import json

import pytest

from training.medclm.__main__ import main
from training.medclm.checkpoint import FORMAT, META_FILE
from training.medclm.quantize import DEFAULT_WEIGHT_MAX, quantize_tensors, quantize_weight


@pytest.fixture
def bare_checkpoint(tmp_path):
    """A folder with config.json but no medclm.json (e.g. a foreign HF checkpoint)."""
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


@pytest.fixture
def meta_only_checkpoint(tmp_path, micro):
    """A folder whose medclm.json is valid (enough to get past the checkpoint checks)."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    meta = {"format": FORMAT, "stage": "hard", "step": 1, "config": micro().to_dict(), "data_fingerprint": "0" * 64,
            "figures": {}}
    (folder / META_FILE).write_text(json.dumps(meta))
    (folder / "config.json").write_text("{}")
    return folder


def _refused(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err, err


def test_missing_checkpoint(tmp_path, capsys, tiny_data):
    missing = str(tmp_path / "nowhere")
    _refused(capsys, ["evaluate", "--checkpoint", missing, "--data", str(tiny_data)], "does not exist")
    _refused(capsys, ["export", "--checkpoint", missing, "--model-repository", str(tmp_path / "repo")],
             "does not exist")
    _refused(capsys, ["quantize", "--checkpoint", missing, "--out", str(tmp_path / "q")], "does not exist")
    assert not (tmp_path / "repo").exists()


def test_checkpoint_without_medclm_json(bare_checkpoint, tmp_path, capsys, tiny_data):
    for argv in (["evaluate", "--checkpoint", str(bare_checkpoint), "--data", str(tiny_data)],
                 ["export", "--checkpoint", str(bare_checkpoint), "--model-repository", str(tmp_path / "repo")],
                 ["quantize", "--checkpoint", str(bare_checkpoint), "--out", str(tmp_path / "q")]):
        _refused(capsys, argv, "not a MedCLM checkpoint (no medclm.json)")
    assert not (tmp_path / "repo").exists() and not (tmp_path / "q").exists()


def test_export_of_incomplete_checkpoint(meta_only_checkpoint, tmp_path, capsys):
    _refused(capsys, ["export", "--checkpoint", str(meta_only_checkpoint), "--model-repository",
                      str(tmp_path / "repo")], "lacks model.safetensors")


def test_missing_data(meta_only_checkpoint, tmp_path, capsys, tiny_data):
    _refused(capsys, ["evaluate", "--checkpoint", str(meta_only_checkpoint), "--data", str(tmp_path / "none")],
             "data folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(capsys, ["evaluate", "--checkpoint", str(meta_only_checkpoint), "--data", str(empty)],
             "test.jsonl does not exist")
    _refused(capsys, ["bench", "--model-repository", str(tmp_path / "repo"), "--data", str(tiny_data)],
             "has no medclm (fp32) model")


def test_w8a8_weights_stay_within_the_cap():
    import torch

    weight = torch.randn(32, 16)
    q, scale = quantize_weight(weight)
    assert q.dtype == torch.int8 and int(q.abs().max()) == DEFAULT_WEIGHT_MAX and scale.shape == (32, 1)
    assert torch.allclose(q.float() * scale, weight, atol=float(scale.max()) / 2 + 1e-6)
    tensors, count = quantize_tensors({"language_model.model.layers.0.mlp.up_proj.weight": weight,
                                       "language_model.lm_head.weight": weight,
                                       "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight": weight})
    assert count == 1 and "language_model.model.layers.0.mlp.up_proj.weight_scale" in tensors
    assert tensors["language_model.lm_head.weight"].dtype == torch.float32
