"""Export parity, metadata, config.pbtxt agreement and the precision variants, on the session's tiny model."""

import json

import numpy as np
import onnx
import pytest

from training.segmenter.checkpoint import load_checkpoint
from training.segmenter.errors import SegmenterError
from training.segmenter.export import OPSET, check_parity, load_onnx, ort_session, read_metadata
from training.segmenter.repository import parse_config, verify_model_dir, write_model_dir


def test_export_matches_torch_within_tolerance(tiny_run, tiny_onnx):
    model, _, spec = load_checkpoint(tiny_run / "checkpoint.pt")
    inputs = np.random.default_rng(0).random((3, 1, spec.input_height, spec.input_width), dtype=np.float32)
    report = check_parity(model, tiny_onnx["fp32"], inputs)  # batch 3: the batch dimension is dynamic
    assert report.max_abs_diff <= 1e-4 and report.label_agreement > 0.999


def test_exported_graph_contract(tiny_onnx):
    model = onnx.load(str(tiny_onnx["fp32"]))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= OPSET >= 17
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["probabilities", "labels"]
    metadata = read_metadata(tiny_onnx["fp32"])
    spec = json.loads(metadata["medclm.preprocessing"])
    assert spec["intensity"]["type"] == "window" and spec["intensity"]["center_hu"] == 40.0
    assert json.loads(metadata["medclm.labels"])[0] == "background"


def test_model_folder_config_agrees_with_onnx(tiny_onnx, tmp_path):
    labels = ["background", "liver", "spleen", "right kidney", "left kidney", "aorta", "vertebra"]
    folder = write_model_dir(tmp_path, "organ_seg_ct", tiny_onnx["fp32"], labels, {"test": True},
                             read_metadata(tiny_onnx["fp32"])["medclm.preprocessing"])
    config = parse_config(folder / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert [i.name for i in config.input] == ["image"] and list(config.input[0].dims) == [1, 64, 64]
    assert (folder / "labels.txt").read_text().splitlines() == labels
    # A config that no longer matches the model is caught.
    (folder / "config.pbtxt").write_text((folder / "config.pbtxt").read_text().replace("TYPE_UINT8", "TYPE_INT64"))
    with pytest.raises(SegmenterError, match="do not match"):
        verify_model_dir(folder)


@pytest.mark.parametrize("variant", ["fp16", "int8"])
def test_variants_agree_with_fp32(tiny_onnx, variant):
    inputs = np.random.default_rng(1).random((2, 1, 64, 64), dtype=np.float32)
    reference = ort_session(tiny_onnx["fp32"]).run(None, {"image": inputs})
    outputs = ort_session(tiny_onnx[variant]).run(None, {"image": inputs})
    assert outputs[0].dtype == np.float32 and outputs[1].dtype == np.uint8  # I/O stays float32 / uint8
    assert np.abs(outputs[0] - reference[0]).max() < 0.2
    assert (outputs[1] == reference[1]).mean() > 0.9
    assert read_metadata(tiny_onnx[variant])["medclm.variant"] == variant
    load_onnx(tiny_onnx[variant])  # passes onnx.checker (what write_model_dir runs)


def test_int8_graph_is_quantised(tiny_onnx):
    ops = {n.op_type for n in onnx.load(str(tiny_onnx["int8"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
