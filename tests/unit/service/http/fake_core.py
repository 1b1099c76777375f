"""FakeCore (canned results, every error on demand, records stream closure) and request builders for the
HTTP tests."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from collections.abc import AsyncIterator

import numpy as np
from PIL import Image

from service.core.masks import encode_png, encode_rle
from service.core.types import (DICOM_FORMATS, AskEvent, AskRequest, AskResult, DicomOutput, Finding, GroundingCheck,
                                ModelInfo, OrganMask, SegmentRequest, SegmentResult, Timings, Usage)
from service.errors import ServiceError

STREAM_DELTAS = ["Reasoning:\n1. CT, axial view.\n", "2. A nodule in the liver <box>[100, 200, 300, 400]</box>.\n",
                 "Answer: a liver nodule."]
MAX_REQUEST_BYTES = 8192  # the test servers' body limit: small, so the 413 tests need only small bodies
IMAGE_SIZE = (64, 48)  # width, height of the canned results


def canned_ask_result(request: AskRequest) -> AskResult:
    """What FakeCore answers to every question."""
    text = "".join(STREAM_DELTAS)
    return AskResult(
        request_id=request.request_id, model=request.model or "medclm", fingerprint="0123456789abcdef",
        answer="a liver nodule.",
        reasoning_steps=["CT, axial view.", "A nodule in the liver <box>[100, 200, 300, 400]</box>."],
        text=text, findings=[Finding(label="nodule", organ="liver", box_norm=(100, 200, 300, 400),
                                     box_px=(6.4, 9.6, 19.2, 19.25))],
        grounding=[GroundingCheck(finding_index=0, claimed_organ="liver", segmented_organ="liver", overlap=0.9,
                                  claimed_overlap=0.9, consistent=True)],
        usage=Usage(prompt_tokens=120, completion_tokens=30),
        timings=Timings(queue_ms=1.0, preprocess_ms=2.0, engine_ms=30.0, time_to_first_token_ms=5.0,
                        grounding_ms=3.0, total_ms=36.0),
        finish_reason="stop", modality="ct", width=IMAGE_SIZE[0], height=IMAGE_SIZE[1])


def fake_dicom_outputs(formats) -> list[DicomOutput]:
    """Stand-ins for the DICOM objects the real core writes (bytes that are not DICOM, distinct per format)."""
    return [DicomOutput(f, f"fake {f} object".encode(), "1.2.840.10008.5.1.4.1.1.66.4", f"1.2.3.{i}", "1.2.3")
            for i, f in enumerate(formats) if f in DICOM_FORMATS]


def canned_labels() -> np.ndarray:
    """An (H, W) label map with two organs (labels 1 and 2)."""
    labels = np.zeros((IMAGE_SIZE[1], IMAGE_SIZE[0]), dtype=np.uint8)
    labels[5:20, 10:30] = 1
    labels[25:40, 35:60] = 2
    return labels


class FakeCore:
    """Implements ServiceCore with canned results; can raise any ErrorCode (or an unexpected exception),
    hang until cancelled, and records requests and whether streams were closed. Runs on the server's loop;
    tests read its threading.Events from the test thread."""

    def __init__(self) -> None:
        self.asks: list[AskRequest] = []
        self.segments: list[SegmentRequest] = []
        self.is_ready = True
        self.error: ServiceError | None = None  # raised by ask / ask_stream (first event) / segment
        self.unexpected: Exception | None = None  # a bug: raised the same way
        self.fail_after_first_delta: ServiceError | None = None
        self.hang = False  # ask: wait until cancelled; ask_stream: wait after the first delta until closed
        self.started = threading.Event()  # a request reached the core
        self.stream_closed = threading.Event()  # an ask_stream iterator was closed (finished or not)
        self.stream_completed = threading.Event()  # an ask_stream iterator got as far as its result
        self.ask_cancelled = threading.Event()

    def _fail_if_told(self) -> None:
        if self.error is not None:
            raise self.error
        if self.unexpected is not None:
            raise self.unexpected

    async def ask(self, request: AskRequest) -> AskResult:
        """Record, fail if told, hang if told, else the canned result."""
        self.asks.append(request)
        self.started.set()
        self._fail_if_told()
        if self.hang:
            try:
                await asyncio.get_running_loop().create_future()
            except asyncio.CancelledError:
                self.ask_cancelled.set()
                raise
        result = canned_ask_result(request)
        result.dicom_outputs = fake_dicom_outputs(request.output_formats)
        return result

    async def ask_stream(self, request: AskRequest) -> AsyncIterator[AskEvent]:
        """The canned text in three deltas, then the result; records closure."""
        self.asks.append(request)
        self.started.set()
        try:
            self._fail_if_told()
            for index, delta in enumerate(STREAM_DELTAS):
                yield AskEvent(delta=delta)
                if index == 0 and self.fail_after_first_delta is not None:
                    raise self.fail_after_first_delta
                if index == 0 and self.hang:
                    await asyncio.get_running_loop().create_future()
            self.stream_completed.set()
            yield AskEvent(result=canned_ask_result(request))
        finally:
            self.stream_closed.set()

    async def segment(self, request: SegmentRequest) -> SegmentResult:
        """Two organs of the canned label map, masks in the requested format."""
        self.segments.append(request)
        self.started.set()
        self._fail_if_told()
        labels = canned_labels()
        organs = []
        for label, name in ((1, "liver"), (2, "spleen")):
            mask = labels == label
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            organs.append(OrganMask(
                label=label, name=name, pixel_count=int(mask.sum()), area_mm2=float(mask.sum()) * 0.25,
                box_px=(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1),
                mask_png=encode_png(mask) if request.mask_format == "png" else b"",
                mask_rle=encode_rle(mask) if request.mask_format == "rle" else []))
        return SegmentResult(request_id=request.request_id, model="organ_seg_ct", fingerprint="fedcba9876543210",
                             modality="ct", width=IMAGE_SIZE[0], height=IMAGE_SIZE[1], pixel_spacing_mm=(0.5, 0.5),
                             organs=organs, labels=labels, timings=Timings(engine_ms=4.0, total_ms=5.0),
                             dicom_outputs=fake_dicom_outputs(request.output_formats))

    def list_models(self) -> list[ModelInfo]:
        """One VQA and one segmentation model."""
        return [ModelInfo("medclm", "vqa", "fp32", ["ct", "cxr"], "0123456789abcdef", self.is_ready, "vllm"),
                ModelInfo("organ_seg_ct", "segmentation", "fp32", ["ct"], "fedcba9876543210", self.is_ready,
                          "onnxruntime")]

    def live(self) -> bool:
        """Always alive."""
        return True

    def ready(self) -> bool:
        """What the test set."""
        return self.is_ready


def png_bytes(width: int = 16, height: int = 12) -> bytes:
    """A small grayscale PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.arange(width * height, dtype=np.uint8).reshape(height, width)).save(buffer, format="PNG")
    return buffer.getvalue()


def ask_json(question: str = "Where is the lesion?", **options) -> dict:
    """A JSON /v1/ask body with a small PNG."""
    return {"image": {"data_base64": base64.b64encode(png_bytes()).decode()}, "question": question, **options}


def data_url(data: bytes | None = None, media_type: str = "image/png") -> str:
    """``data:<media_type>;base64,...``."""
    return f"data:{media_type};base64,{base64.b64encode(png_bytes() if data is None else data).decode()}"
