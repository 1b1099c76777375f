"""Segmentation engines under faults, against real services without a VQA model: a model file missing at
start-up (ONNX Runtime) and Triton stopped and started again. In both cases readiness turns false, requests
get a fast 503 / UNAVAILABLE, and the service recovers by itself once the file or Triton is back. Requests
whose deadline passes while they wait for a batch never reach the model: ONNX Runtime's batch counter and
Triton's own inference counter do not move."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import grpc
import httpx
import pytest

from service.grpc.gen import medclm_pb2, medclm_pb2_grpc
from tests.integration.service.reliability.reliability_support import (ct_small, image_json, metric, scrape,
                                                                       segment_only_args, segmenter_repository,
                                                                       wait_until)
from tests.support.medclm_repository import COMMITTED_REPOSITORY
from tests.support.service_process import REPO_ROOT, start_service

pytestmark = pytest.mark.timeout(600)

MISSING = "organ_seg_cxr/1/model.onnx"
BATCH_DELAY_MS = "1500"  # a request waits this long for its batch to fill: long enough to expire in the queue
SHORT_DEADLINE_S = 0.4


def segment_http(url: str, **headers) -> httpx.Response:
    return httpx.post(f"{url}/v1/segment", json={"image": image_json(ct_small(), "application/dicom"),
                                                  "mask_format": "rle"}, headers=headers, timeout=30)


def segment_grpc(address: str, timeout: float = 30):
    with grpc.insecure_channel(address) as channel:
        return medclm_pb2_grpc.MedCLMStub(channel).Segment(medclm_pb2.SegmentRequest(
            image=medclm_pb2.Image(data=ct_small(), media_type="application/dicom"),
            mask_format=medclm_pb2.MASK_FORMAT_RLE), timeout=timeout)


def readiness(url: str) -> int:
    return httpx.get(f"{url}/health/ready", timeout=10).status_code


def assert_expired_requests_never_run(url: str, address: str, images_run) -> None:
    """Two requests (HTTP, gRPC) expire while queued for a batch; ``images_run()`` (the engine's own count
    of images it ran) does not move for them, and moves by exactly one for the next request without a
    deadline (so neither expired image rode along in its batch)."""
    before = images_run()
    reply = segment_http(url, **{"X-Request-Timeout": str(SHORT_DEADLINE_S)})
    assert reply.status_code == 504 and reply.json()["error"]["code"] == "DEADLINE_EXCEEDED"
    with pytest.raises(grpc.RpcError) as expired:
        segment_grpc(address, timeout=SHORT_DEADLINE_S)
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert segment_http(url).status_code == 200  # waits for its own batch
    assert images_run() == before + 1


# --- ONNX Runtime: a model file missing at start-up ------------------------------------------------------------
@pytest.fixture(scope="module")
def missing_file_service(tmp_path_factory):
    repository = segmenter_repository(tmp_path_factory.mktemp("missing") / "model_repository",
                                      missing_files=(MISSING,))
    service = start_service(segment_only_args(repository, "--max-queue-delay-ms", BATCH_DELAY_MS,
                                              "--recovery-max-backoff-s", "2"), ready=False)
    yield service, repository
    service.stop()


def test_a_missing_model_file_means_not_ready_and_fast_503_until_it_appears(missing_file_service):
    service, repository = missing_file_service
    url = service.http_url
    assert readiness(url) == 503
    reply = segment_http(url)
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "UNAVAILABLE"
    with pytest.raises(grpc.RpcError) as down:
        segment_grpc(service.grpc_address, timeout=10)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    models = {m["id"]: m for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]}
    assert "organ_seg_cxr" not in models

    (repository / MISSING).symlink_to(COMMITTED_REPOSITORY / MISSING)  # the operator restores the file
    wait_until(lambda: readiness(url) == 200, "the supervisor to load the model", timeout_s=60)
    assert segment_http(url).status_code == 200
    assert segment_grpc(service.grpc_address).organs
    models = {m["id"]: m for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]}
    assert models["organ_seg_cxr"]["ready"] and models["organ_seg_ct"]["ready"]
    assert metric(scrape(url), "medclm_engine_restarts_total", model="segmentation") == 1


def test_onnx_runtime_never_runs_a_request_whose_deadline_passed_in_the_queue(missing_file_service):
    service, _ = missing_file_service
    wait_until(lambda: readiness(service.http_url) == 200, "the service to be ready")
    assert_expired_requests_never_run(service.http_url, service.grpc_address, lambda: metric(
        scrape(service.http_url), "medclm_segmentation_batch_size_sum", model="organ_seg_ct"))


# --- Triton: unreachable, then back ---------------------------------------------------------------------------
class TritonProcess:
    """``python -m service.triton_local`` on ``repository`` that can be stopped and started again on the same
    ports."""

    def __init__(self, repository):
        self.repository = repository
        self.process = None
        self.ports = {"http_port": 0, "grpc_port": 0, "metrics_port": 0}

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.triton_local", "--model-repository", str(self.repository),
             "--http-port", str(self.ports["http_port"]), "--grpc-port", str(self.ports["grpc_port"]),
             "--metrics-port", str(self.ports["metrics_port"])],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()  # printed once Triton's health endpoint answers
        if not line:
            self.process.wait(30)
            pytest.fail(f"triton_local exited {self.process.returncode}: {self.process.stderr.read()[-3000:]}")
        self.ports = json.loads(line)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)

    def inferences(self, model: str) -> float:
        """Triton's own count of images it ran through ``model`` (batch items, not requests)."""
        text = httpx.get(f"http://127.0.0.1:{self.ports['metrics_port']}/metrics", timeout=10).text
        return metric(text, "nv_inference_count_total", model=model)  # the parser adds _total


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    # the segmenters only: the repository may also hold medclm, which this Triton build cannot serve
    process = TritonProcess(segmenter_repository(tmp_path_factory.mktemp("triton_served") / "model_repository"))
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def triton_service(triton, tmp_path_factory):
    repository = segmenter_repository(tmp_path_factory.mktemp("triton") / "model_repository")
    service = start_service(segment_only_args(
        repository, "--segmentation-engine", "triton", "--triton-url", f"127.0.0.1:{triton.ports['grpc_port']}",
        "--max-queue-delay-ms", BATCH_DELAY_MS))
    yield service
    service.stop()


def test_triton_never_receives_a_request_whose_deadline_passed_in_the_queue(triton, triton_service):
    assert_expired_requests_never_run(triton_service.http_url, triton_service.grpc_address,
                                      lambda: triton.inferences("organ_seg_ct"))


def test_triton_down_means_fast_503_and_the_service_follows_it_back_up(triton, triton_service):
    url = triton_service.http_url
    assert readiness(url) == 200
    triton.stop()
    wait_until(lambda: readiness(url) == 503, "the probe to notice Triton is gone")
    reply = segment_http(url)
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "UNAVAILABLE"
    with pytest.raises(grpc.RpcError) as down:
        segment_grpc(triton_service.grpc_address, timeout=10)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE

    triton.start()  # same ports: the service's address still points at it
    wait_until(lambda: readiness(url) == 200, "the probe to see Triton ready again", timeout_s=120)
    assert segment_http(url).status_code == 200
    assert segment_grpc(triton_service.grpc_address).organs
