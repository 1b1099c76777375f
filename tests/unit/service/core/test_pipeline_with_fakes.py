"""The pipeline's own logic with fake engines (named fakes): validation order, boxes in original pixels,
grounding, streaming and abort, admission, deadlines, draining, modality checks.

Real vLLM / ONNX Runtime behind the same pipeline are covered by tests/integration/service.
"""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest
from PIL import Image

from service.config import Settings
from service.core.pipeline import Pipeline
from service.core.registry import RepositoryModel
from service.core.types import AskRequest, ImageInput, SegmentRequest
from service.engines.base import GenerationChunk
from service.errors import ErrorCode, ServiceError
from training.data.anatomy import ORGAN_BY_NAME

TEXT = ("Reasoning:\n1. The image is an axial abdominal CT slice (soft-tissue window).\n"
        "2. The finding lies within the liver, on the patient's right side.\n"
        "3. It is a hypodense cyst: a round lesion, about 12 mm across (medium).\n"
        "4. It is located at <box>[250, 500, 500, 750]</box>, in the anterior, central part of the liver.\n"
        "5. Therefore the answer is liver.\nAnswer: liver")


class FakeVqaEngine:
    """Streams a fixed text in a few chunks; records aborts; can be slowed down or made unready."""

    name = "medclm"

    def __init__(self, text: str = TEXT, delay: float = 0.0):
        self.text, self.delay = text, delay
        self.is_ready, self.calls, self.closed_early = True, 0, 0

    async def start(self):
        pass

    def ready(self):
        return self.is_ready

    async def generate(self, messages, image, params, request_id):
        self.calls += 1
        self.last_image, self.last_messages = image, messages
        pieces = [self.text[i:i + 40] for i in range(0, len(self.text), 40)]
        finished = False
        try:
            for index, piece in enumerate(pieces):
                await asyncio.sleep(self.delay)
                finished = index == len(pieces) - 1
                yield GenerationChunk(piece, 70, index + 1, finished, "stop" if finished else "")
        finally:
            if not finished:
                self.closed_early += 1

    async def abort(self, request_id):
        pass

    async def close(self):
        pass


class FakeSegmentationEngine:
    """Labels the left half of any image as liver."""

    engine = "fake"

    def __init__(self):
        self.calls = 0

    async def start(self):
        pass

    def ready(self):
        return True

    async def segment(self, model, pixels, modality, deadline=None):
        self.calls += 1
        labels = np.zeros(pixels.shape[:2], dtype=np.uint8)
        labels[:, : pixels.shape[1] // 2] = ORGAN_BY_NAME["liver"].label
        return labels

    async def close(self):
        pass


def png_bytes(width: int, height: int, bits: int = 16) -> bytes:
    pixels = np.full((height, width), 1024 + 40, dtype=np.uint16)  # soft tissue in HU + 1024
    image = Image.fromarray(pixels) if bits == 16 else Image.fromarray((pixels // 8).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_pipeline(box_grid=None, **settings_changes) -> tuple[Pipeline, FakeVqaEngine, FakeSegmentationEngine]:
    settings = Settings(**settings_changes)
    vqa, seg = FakeVqaEngine(), FakeSegmentationEngine()
    models = {"medclm": RepositoryModel("medclm", "vqa", "fp32", ("ct", "cxr"), "f" * 16, box_grid)}
    segmenters = {f"organ_seg_{m}": RepositoryModel(f"organ_seg_{m}", "segmentation", "fp32", (m,), "e" * 16)
                  for m in ("ct", "cxr")}
    return Pipeline(settings, {"medclm": vqa}, models, seg, segmenters), vqa, seg


def ask(width=400, height=200, **changes) -> AskRequest:
    values = dict(image=ImageInput(png_bytes(width, height), "image/png"), question="Where is the lesion?")
    values.update(changes)
    return AskRequest(**values)


def run(coro):
    return asyncio.run(coro)


def test_boxes_come_back_in_original_pixels_of_a_non_square_image_with_grounding():
    pipeline, vqa, seg = make_pipeline()
    result = run(pipeline.ask(ask(width=400, height=200)))
    assert result.answer == "liver" and len(result.reasoning_steps) == 5
    (finding,) = result.findings
    assert finding.box_norm == (250, 500, 500, 750) and finding.organ == "liver"
    assert finding.box_px == pytest.approx((100.0, 100.0, 200.0, 150.0))  # 0.25*400, 0.5*200, ...
    assert vqa.last_image.size == (400, 200)  # the model view keeps the original size; vLLM resizes
    (check,) = result.grounding
    assert check.segmented_organ == "liver" and check.consistent and check.overlap == pytest.approx(1.0)
    assert result.usage.completion_tokens > 0 and result.timings.total_ms >= result.timings.engine_ms
    assert (result.width, result.height, result.modality) == (400, 200, "ct")


@pytest.mark.parametrize("box_grid, sent", [
    (None, "Is the lesion at <box>[123, 456, 789, 901]</box> in the liver? <box>[5, 5, 1, 1]</box>"),
    (128, "Is the lesion at <box>[125, 453, 789, 898]</box> in the liver? <box>[5, 5, 1, 1]</box>")])
def test_a_box_in_the_question_is_snapped_to_the_grid_of_a_pixel_token_model(box_grid, sent):
    pipeline, vqa, _ = make_pipeline(box_grid=box_grid)
    typed = "Is the lesion at <box>[123, 456, 789, 901]</box> in the liver? <box>[5, 5, 1, 1]</box>"
    run(pipeline.ask(ask(question=typed, verify_grounding=False)))
    assert vqa.last_messages[0]["content"][-1]["text"].startswith(sent)  # a reversed box stays as typed


def test_stream_yields_deltas_then_one_result_and_closing_early_aborts():
    pipeline, vqa, _ = make_pipeline()

    async def scenario():
        events = [e async for e in pipeline.ask_stream(ask(verify_grounding=False))]
        assert "".join(e.delta for e in events[:-1]) == TEXT and events[-1].result is not None
        stream = pipeline.ask_stream(ask())
        first = await stream.__anext__()
        assert first.delta
        await stream.aclose()
        assert vqa.closed_early == 1
        assert pipeline.vqa_gates["medclm"].admitted == 0  # the admission was given back

    run(scenario())


@pytest.mark.parametrize("changes, field", [
    ({"question": "   "}, "question"),
    ({"question": "x" * 3000}, "question"),
    ({"max_tokens": 100000}, "max_tokens"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"seed": -5}, "seed"),
    ({"precision": "fp8"}, "precision"),
])
def test_bad_options_are_invalid_argument_before_the_engine_runs(changes, field):
    pipeline, vqa, _ = make_pipeline()
    with pytest.raises(ServiceError) as error:
        run(pipeline.ask(ask(**changes)))
    assert error.value.code is ErrorCode.INVALID_ARGUMENT and error.value.field == field
    assert vqa.calls == 0


def test_unknown_model_and_unserved_variant_are_not_found():
    pipeline, _, _ = make_pipeline()
    for changes in ({"model": "medclm_large"}, {"precision": "int8"}):
        with pytest.raises(ServiceError) as error:
            run(pipeline.ask(ask(**changes)))
        assert error.value.code is ErrorCode.NOT_FOUND


def test_overload_is_refused_before_decoding_and_deadline_before_start():
    pipeline, vqa, _ = make_pipeline(vqa_max_running=1, vqa_max_waiting=0)
    vqa.delay = 0.05

    async def scenario():
        first = asyncio.create_task(pipeline.ask(ask()))
        await asyncio.sleep(0.01)
        corrupt = ask(image=ImageInput(b"not an image", "image/png"))  # would be INVALID_ARGUMENT if decoded
        with pytest.raises(ServiceError) as refused:
            await pipeline.ask(corrupt)
        assert refused.value.code is ErrorCode.OVERLOADED and refused.value.retry_after
        await first
        with pytest.raises(ServiceError) as late:
            await pipeline.ask(ask(deadline=time.monotonic() - 1))
        assert late.value.code is ErrorCode.DEADLINE_EXCEEDED

    run(scenario())
    assert vqa.calls == 1


def test_deadline_during_generation_and_draining():
    pipeline, vqa, _ = make_pipeline()
    vqa.delay = 0.2
    with pytest.raises(ServiceError) as error:
        run(pipeline.ask(ask(deadline=time.monotonic() + 0.3)))
    assert error.value.code is ErrorCode.DEADLINE_EXCEEDED and vqa.closed_early == 1
    pipeline.start_draining()
    assert not pipeline.ready()
    with pytest.raises(ServiceError) as draining:
        run(pipeline.ask(ask()))
    assert draining.value.code is ErrorCode.UNAVAILABLE


def test_segment_reports_organs_in_original_pixels():
    pipeline, _, seg = make_pipeline()
    result = run(pipeline.segment(SegmentRequest(ImageInput(png_bytes(300, 100), "image/png"), mask_format="rle")))
    (liver,) = result.organs
    assert liver.name == "liver" and liver.box_px == (0, 0, 150, 100) and liver.pixel_count == 150 * 100
    assert liver.area_mm2 is None and result.labels.shape == (100, 300)
    with pytest.raises(ServiceError) as error:
        run(pipeline.segment(SegmentRequest(ImageInput(png_bytes(30, 10), "image/png"), mask_format="svg")))
    assert error.value.code is ErrorCode.INVALID_ARGUMENT and error.value.field == "mask_format"
