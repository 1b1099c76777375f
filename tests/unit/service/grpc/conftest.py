"""FakeCore (canned results, scripted failures, records what it was asked) and a real grpc.aio server
around it, started per test on 127.0.0.1:0 through tests/support/grpc_server.py."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.config import Settings
from service.core.masks import organ_masks
from service.core.types import (AskEvent, AskRequest, AskResult, Finding, GroundingCheck, ModelInfo, SegmentRequest,
                                SegmentResult, Timings, Usage)
from service.grpc.gen import medclm_pb2_grpc
from service.metrics import ServiceMetrics
from tests.support.grpc_server import GrpcServerThread

MAX_REQUEST_BYTES = 64 * 1024  # small, so one test can exceed it cheaply
DELTAS = ["Reasoning:\n1. Axial CT.\n", "2. A nodule in the liver <box>[100, 200, 300, 400]</box>.\n",
          "Answer: liver nodule"]


def canned_ask_result(request_id: str) -> AskResult:
    """An answer with every field set to a distinct value (floats exact in float32 where the wire uses it)."""
    return AskResult(
        request_id=request_id, model="medclm_int8", fingerprint="sha256:0123abcd", answer="liver nodule",
        reasoning_steps=["Axial CT.", "A nodule in the liver <box>[100, 200, 300, 400]</box>."],
        text="".join(DELTAS),
        findings=[Finding(label="nodule", organ="liver", box_norm=(100, 200, 300, 400),
                          box_px=(51.25, 102.5, 153.75, 205.0)),
                  Finding(label="", organ="", box_norm=(0, 1, 998, 999), box_px=(0.0, 0.5, 511.0, 511.5))],
        grounding=[GroundingCheck(finding_index=0, claimed_organ="liver", segmented_organ="liver", overlap=0.8125,
                                  claimed_overlap=0.8125, consistent=True),
                   GroundingCheck(finding_index=1, claimed_organ="", segmented_organ="background", overlap=0.3,
                                  claimed_overlap=0.0, consistent=False)],
        usage=Usage(prompt_tokens=601, completion_tokens=42),
        timings=Timings(queue_ms=1.5, preprocess_ms=2.25, engine_ms=300.125, time_to_first_token_ms=20.0625,
                        grounding_ms=4.5, total_ms=330.375),
        finish_reason="stop", modality="ct", width=512, height=384)


def canned_labels() -> np.ndarray:
    """A 24 x 32 label map with two organs (1 and 2) of known shapes."""
    labels = np.zeros((24, 32), dtype=np.uint8)
    labels[2:10, 3:12] = 1
    labels[12:20, 16:30] = 2
    labels[15, 20] = 0  # a hole, so the RLE has more than two runs per organ
    return labels


CANNED_MODELS = [
    ModelInfo(name="medclm", kind="vqa", precision="fp32", modalities=["ct", "cxr"], fingerprint="sha256:aa",
              ready=True, engine="vllm"),
    ModelInfo(name="organ_seg_ct_int8", kind="segmentation", precision="int8", modalities=["ct"],
              fingerprint="sha256:bb", ready=False, engine="onnxruntime"),
]


class FakeCore:
    """Implements service.core.api.ServiceCore for transport tests: canned results, ``error`` raised by every
    call (ask_stream raises it after ``error_after_deltas`` deltas), ``hold_stream`` keeps the stream open
    after its deltas until it is closed; ``requests`` holds every core request received."""

    def __init__(self) -> None:
        self.is_ready = True
        self.error: BaseException | None = None
        self.error_after_deltas = 0
        self.hold_stream = False
        self.requests: list[AskRequest | SegmentRequest] = []
        self.stream_closed_early = threading.Event()  # the stream was finalised before its final event
        self.stream_finished = threading.Event()

    def _raise_if_told(self) -> None:
        if self.error is not None:
            raise self.error

    async def ask(self, request: AskRequest) -> AskResult:
        """The canned result, echoing the request id."""
        self.requests.append(request)
        self._raise_if_told()
        return canned_ask_result(request.request_id)

    async def ask_stream(self, request: AskRequest):
        """The canned deltas, then the canned result."""
        self.requests.append(request)
        finished = False
        try:
            for index, delta in enumerate(DELTAS):
                if self.error is not None and index == self.error_after_deltas:
                    raise self.error
                yield AskEvent(delta=delta)
            if self.hold_stream:
                await asyncio.Event().wait()  # a generation that never ends on its own
            finished = True
            yield AskEvent(result=canned_ask_result(request.request_id))
        finally:
            (self.stream_finished if finished else self.stream_closed_early).set()

    async def segment(self, request: SegmentRequest) -> SegmentResult:
        """Masks of :func:`canned_labels` in the requested format, with a pixel spacing."""
        self.requests.append(request)
        self._raise_if_told()
        labels = canned_labels()
        spacing = (0.75, 0.5)
        return SegmentResult(request_id=request.request_id, model="organ_seg_ct", fingerprint="sha256:cc",
                             modality="ct", width=labels.shape[1], height=labels.shape[0],
                             pixel_spacing_mm=spacing, organs=organ_masks(labels, spacing, request.mask_format),
                             labels=labels, timings=Timings(preprocess_ms=1.0, engine_ms=2.0, total_ms=3.5))

    def list_models(self) -> list[ModelInfo]:
        """The canned models."""
        self._raise_if_told()
        return list(CANNED_MODELS)

    def live(self) -> bool:
        """Always live."""
        return True

    def ready(self) -> bool:
        """What the test set."""
        return self.is_ready


@pytest.fixture
def fake_core() -> FakeCore:
    return FakeCore()


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics()


@pytest.fixture
def grpc_server(fake_core, metrics):
    settings = Settings(host="127.0.0.1", grpc_port=0, max_request_bytes=MAX_REQUEST_BYTES)
    with GrpcServerThread(fake_core, settings, metrics, health_watch_poll_s=0.02) as server:
        yield server


@pytest.fixture
def stub(grpc_server):
    return medclm_pb2_grpc.MedCLMStub(grpc_server.channel())
