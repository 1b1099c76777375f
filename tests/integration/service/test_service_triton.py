"""The service with Triton as its segmentation engine (the real local tritonserver via tritonclient): the same
masks as the in-process ONNX Runtime service, UNAVAILABLE (not a hang) once Triton is gone, clean SIGTERM exit."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time

import grpc
import httpx
import pytest
from pydicom.data import get_testdata_file

from service.grpc.gen import medclm_pb2, medclm_pb2_grpc
from tests.integration.service.conftest import combined_repository
from tests.support.service_process import REPO_ROOT, start_service

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def triton():
    process = subprocess.Popen([sys.executable, "-m", "service.triton_local", "--model-repository",
                                str(REPO_ROOT / "model_repository"), "--http-port", "0", "--grpc-port", "0"],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()  # printed once Triton's health endpoint answers
    if not line:
        process.wait(10)
        pytest.fail(f"triton_local exited {process.returncode}: {process.stderr.read()[-3000:]}")
    yield process, json.loads(line)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


@pytest.fixture(scope="module")
def triton_service(triton, medclm_repository, tmp_path_factory):
    """A service whose segmenter is Triton over gRPC; no VQA model, so it starts in seconds (and is never
    'ready' as a whole: readiness needs every engine)."""
    _, ports = triton
    repository = combined_repository(medclm_repository, tmp_path_factory.mktemp("triton") / "repo", with_medclm=False)
    service = start_service(["--model-repository", str(repository), "--segmentation-engine", "triton",
                             "--triton-url", f"127.0.0.1:{ports['grpc_port']}", "--triton-protocol", "grpc"],
                            ready=False)
    with grpc.insecure_channel(service.grpc_address) as channel:
        stub = medclm_pb2_grpc.MedCLMStub(channel)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # polls the service's own model readiness
            models = {m.name: m.ready for m in stub.ListModels(medclm_pb2.ListModelsRequest(), timeout=10).models}
            if models.get("organ_seg_ct"):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the Triton segmenter never became ready: {models}")
    yield service
    service.stop()


def segment(address: str, precision: str = "") -> medclm_pb2.SegmentResponse:
    data = open(get_testdata_file("CT_small.dcm"), "rb").read()
    with grpc.insecure_channel(address) as channel:
        return medclm_pb2_grpc.MedCLMStub(channel).Segment(medclm_pb2.SegmentRequest(
            image=medclm_pb2.Image(data=data, media_type="application/dicom"), precision=precision,
            mask_format=medclm_pb2.MASK_FORMAT_RLE), timeout=60)


@pytest.mark.parametrize("precision", ["", "int8"])
def test_triton_backed_segmentation_equals_in_process_onnx_runtime(triton_service, service, precision):
    through_triton, in_process = segment(triton_service.grpc_address, precision), segment(service.grpc_address,
                                                                                         precision)
    assert [o.name for o in through_triton.organs] == [o.name for o in in_process.organs] and in_process.organs
    for a, b in zip(through_triton.organs, in_process.organs):
        assert list(a.mask_rle) == list(b.mask_rle) and a.area_mm2 == b.area_mm2


def test_triton_gone_means_unavailable_on_both_transports_then_clean_shutdown(triton, triton_service):
    process, _ = triton
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    data = base64.b64encode(open(get_testdata_file("CT_small.dcm"), "rb").read()).decode()
    body = {"image": {"data_base64": data, "media_type": "application/dicom"}}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the engine's probe notices within a few seconds
        reply = httpx.post(f"{triton_service.http_url}/v1/segment", json=body, timeout=30)
        if reply.status_code != 200:
            break
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "UNAVAILABLE"
    with pytest.raises(grpc.RpcError) as failure:
        segment(triton_service.grpc_address)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert httpx.get(f"{triton_service.http_url}/health/ready", timeout=10).status_code == 503
    assert triton_service.stop() == 0  # SIGTERM: drained and exited cleanly
