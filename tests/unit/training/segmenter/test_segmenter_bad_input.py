"""Bad input to export / evaluate / quantise fails with a SegmenterError (a ValueError) naming the file."""

import numpy as np
import pytest

from training.segmenter.__main__ import main
from training.segmenter.checkpoint import load_checkpoint
from training.segmenter.errors import SegmenterError
from training.segmenter.export import load_onnx, ort_session
from training.segmenter.pipeline import evaluate_file
from training.segmenter.quantize import convert_fp16, quantize_int8


def test_missing_checkpoint(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(SegmenterError, match="nope.pt does not exist"):
        load_checkpoint(missing)
    assert issubclass(SegmenterError, ValueError)


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SegmenterError, match="bad.pt"):
        load_checkpoint(bad)


def test_wrong_modality_for_checkpoint_and_onnx(tiny_run, tiny_onnx):
    with pytest.raises(SegmenterError, match="for modality 'ct', not 'cxr'"):
        load_checkpoint(tiny_run / "checkpoint.pt", "cxr")
    with pytest.raises(SegmenterError, match="fp32.onnx is for modality 'ct', not 'cxr'"):
        evaluate_file(None, tiny_onnx["fp32"], "cxr", progress=False)


def test_corrupt_onnx_everywhere(tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    for call in (lambda: load_onnx(bad), lambda: ort_session(bad), lambda: convert_fp16(bad, tmp_path / "o.onnx"),
                 lambda: evaluate_file(None, bad, "ct", progress=False)):
        with pytest.raises(SegmenterError, match="corrupt.onnx"):
            call()


def test_empty_calibration_set(tiny_onnx, tmp_path):
    with pytest.raises(SegmenterError, match="empty calibration set for .*fp32.onnx"):
        quantize_int8(tiny_onnx["fp32"], tmp_path / "int8.onnx", np.zeros((0, 1, 64, 64), np.float32))


def test_cli_reports_errors_with_file_name(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--onnx", str(tmp_path / "gone.onnx"), "--modality", "ct"]) == 2
    assert "gone.onnx does not exist" in capsys.readouterr().err
    assert main(["train", "--modality", "ct", "--out", str(tmp_path), "--epocs=1"]) == 2
    assert "unknown config key 'epocs'" in capsys.readouterr().err
