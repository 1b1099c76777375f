"""The real tritonserver (pytriton wheel) serving the committed model_repository through our Python-based
``onnxruntime`` backend: health, metadata, config and inference over HTTP and gRPC match in-process ORT.

Triton is started once for the module, through the CLI (``python -m service.triton_local``, ports 0), which
also covers the printed JSON line and clean shutdown on SIGTERM.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tritonclient_grpc
import tritonclient.http as tritonclient_http

REPO_ROOT = Path(__file__).resolve().parents[3]
REPOSITORY = REPO_ROOT / "model_repository"
MODELS = ["organ_seg_ct", "organ_seg_ct_fp16", "organ_seg_ct_int8",
          "organ_seg_cxr", "organ_seg_cxr_fp16", "organ_seg_cxr_int8"]


@pytest.fixture(scope="module")
def triton():
    assert (REPOSITORY / "organ_seg_ct" / "1" / "model.onnx").is_file(), \
        "the committed default models are missing: python -m training.segmenter build-defaults"
    process = subprocess.Popen(
        [sys.executable, "-m", "service.triton_local", "--model-repository", str(REPOSITORY),
         "--http-port", "0", "--grpc-port", "0"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()  # printed only once /v2/health/ready answered 200
    if not line:
        process.wait(10)
        pytest.fail(f"triton_local exited {process.returncode}: {process.stderr.read()[-3000:]}")
    ports = json.loads(line)
    yield ports
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0


def _inputs(modality: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Two preprocessed phantom images and the in-process ONNX Runtime outputs of every model."""
    from training.data.phantoms import generate_case
    from training.segmenter.export import ort_session
    from training.segmenter.preprocessing import default_spec, preprocess_image

    spec = default_spec(modality)
    batch = np.stack([preprocess_image(generate_case(modality, 777, i).image, spec)[0] for i in range(2)])
    expected = {name: ort_session(REPOSITORY / name / "1" / "model.onnx").run(None, {"image": batch})
                for name in MODELS if name.startswith(f"organ_seg_{modality}")}
    return batch, expected


def test_cli_printed_three_ports(triton):
    assert set(triton) == {"http_port", "grpc_port", "metrics_port"}
    assert len(set(triton.values())) == 3


def test_health_and_metadata_http(triton):
    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{triton['http_port']}")
    assert client.is_server_live() and client.is_server_ready()
    for name in MODELS:
        assert client.is_model_ready(name)
        metadata = client.get_model_metadata(name)
        assert metadata["platform"] == "onnxruntime_onnx"
        assert [i["name"] for i in metadata["inputs"]] == ["image"]
        assert metadata["inputs"][0]["shape"] == [-1, 1, 256, 256]
        assert {o["name"]: o["datatype"] for o in metadata["outputs"]} == {"probabilities": "FP32", "labels": "UINT8"}
        config = client.get_model_config(name)
        assert config["max_batch_size"] == 8 and config["dynamic_batching"]["preferred_batch_size"] == [4, 8]


def test_health_and_config_grpc(triton):
    client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{triton['grpc_port']}")
    assert client.is_server_live() and client.is_server_ready()
    config = client.get_model_config("organ_seg_cxr_int8", as_json=True)["config"]
    assert config["platform"] == "onnxruntime_onnx" and config["input"][0]["name"] == "image"
    metadata = client.get_model_metadata("organ_seg_cxr", as_json=True)
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "labels"]


@pytest.mark.parametrize("modality", ["ct", "cxr"])
def test_inference_matches_in_process_onnxruntime(triton, modality):
    batch, expected = _inputs(modality)
    http = tritonclient_http.InferenceServerClient(f"127.0.0.1:{triton['http_port']}")
    grpc = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{triton['grpc_port']}")
    for name, (probabilities, labels) in expected.items():
        for module, client in ((tritonclient_http, http), (tritonclient_grpc, grpc)):
            image = module.InferInput("image", list(batch.shape), "FP32")
            image.set_data_from_numpy(batch)
            outputs = [module.InferRequestedOutput("labels"), module.InferRequestedOutput("probabilities")]
            result = client.infer(name, [image], outputs=outputs)
            assert np.array_equal(result.as_numpy("labels"), labels), f"{name} via {module.__name__}"
            assert np.abs(result.as_numpy("probabilities") - probabilities).max() < 1e-5


def test_metrics_endpoint_counts_requests(triton):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{triton['metrics_port']}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "nv_inference_request_success" in text
