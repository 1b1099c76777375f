"""The real service (vLLM + ONNX Runtime behind gRPC and HTTP) on 127.0.0.1:0, called the way its users call it:
generated gRPC stubs, httpx, the `openai` client, real DICOM files from pydicom's wheel."""

from __future__ import annotations

import base64
import io
import json
import zlib
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pydicom
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from openai import OpenAI
from PIL import Image
from pydicom.data import get_testdata_file

from service.core.masks import decode_rle
from service.grpc.gen import medclm_pb2, medclm_pb2_grpc
from training.data.boxes import denormalize_box
from training.data.records import VQARecord

from tests.support.files import dicom_from_phantom

pytestmark = pytest.mark.timeout(600)


# --- inputs -------------------------------------------------------------------------------------------------
def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def grounding_case(medclm_dataset):
    """A CT phantom with a lesion cropped to a non-square image (the lesion kept inside), and a grounding
    question whose answer is a box."""
    records = _records(medclm_dataset)
    record = next(r for r in records if r.question_type == "grounding" and r.modality == "ct"
                  and r.stage == "hard" and r.findings[0].box[3] < 700)
    image = Image.open(medclm_dataset / record.image)
    cropped = image.crop((0, 0, image.width, image.height * 3 // 4))
    return record, png_bytes(cropped), cropped.size


def _records(data) -> list[VQARecord]:
    return [VQARecord.model_validate_json(line) for line in (data / "train.jsonl").read_text().splitlines()
            if line.strip()]


def ct_small() -> bytes:
    return open(get_testdata_file("CT_small.dcm"), "rb").read()


def mr_small() -> bytes:
    return open(get_testdata_file("MR_small.dcm"), "rb").read()


def truncated_dicom() -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")


def bomb_png() -> bytes:
    """A well-formed PNG declaring 100000 x 100000 pixels whose data would inflate to 10 GB (only a few
    hundred bytes are sent: the service must refuse it from the header)."""
    header = (100000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    data = zlib.compress(b"\x00" * 1_000_000)  # the start of the rows, enough for a decoder to begin
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


# --- clients ------------------------------------------------------------------------------------------------
def image_body(data: bytes, media_type: str, **extra) -> dict:
    return {"data_base64": base64.b64encode(data).decode(), "media_type": media_type, **extra}


def _corners(box) -> tuple:
    return tuple(box[k] for k in ("x1", "y1", "x2", "y2")) if isinstance(box, dict) else tuple(box)


def assert_boxes_in_original_pixels(findings, width: int, height: int):
    assert findings, "the model returned no box"
    for finding in findings:
        x1, y1, x2, y2 = _corners(finding["box_px"])
        nx1, ny1, nx2, ny2 = _corners(finding["box_norm"])
        assert (x1, y1, x2, y2) == pytest.approx((nx1 / 1000 * width, ny1 / 1000 * height,
                                                  nx2 / 1000 * width, ny2 / 1000 * height), abs=0.01)
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height


def _box(pb):
    return {"box_px": (pb.box_px.x1, pb.box_px.y1, pb.box_px.x2, pb.box_px.y2),
            "box_norm": (pb.box_norm.x1, pb.box_norm.y1, pb.box_norm.x2, pb.box_norm.y2)}


# --- gRPC ---------------------------------------------------------------------------------------------------
def test_grpc_ask_returns_the_lesion_box_in_the_original_pixels_of_a_non_square_image(stub, memorised,
                                                                                     medclm_dataset):
    record = next(r for r in memorised if r.modality == "cxr")  # 260 x 320 chest X-ray phantom
    data = (medclm_dataset / record.image).read_bytes()
    reply = stub.Ask(medclm_pb2.AskRequest(image=medclm_pb2.Image(data=data, media_type="image/png",
                                                                  modality="cxr"),
                                           question=record.question), timeout=120)
    assert reply.text == record.target  # the memorising model's known answer
    assert (reply.width, reply.height, reply.modality) == (record.width, record.height, "cxr") != (128, 128, "cxr")
    assert reply.model == "medclm" and len(reply.fingerprint) == 16 and reply.request_id
    assert reply.reasoning_steps == record.rationale and reply.answer == record.answer
    findings = [_box(f) for f in reply.findings]
    assert_boxes_in_original_pixels(findings, record.width, record.height)
    truth = record.findings[0]
    assert findings[0]["box_norm"] == tuple(truth.box)
    assert findings[0]["box_px"] == pytest.approx(denormalize_box(truth.box, record.width, record.height), abs=1e-3)
    assert reply.findings[0].organ == truth.organ and reply.findings[0].label == truth.label
    (check,) = reply.grounding  # the organ segmenter looked at the same box
    assert check.claimed_organ == truth.organ and check.segmented_organ and 0 < check.overlap <= 1
    assert check.consistent == (check.segmented_organ == truth.organ)
    assert reply.usage.completion_tokens > 0 and reply.timings.engine_ms > 0


def test_grpc_stream_deltas_add_up_to_the_final_text(stub, grounding_case):
    record, data, _ = grounding_case
    events = list(stub.AskStream(medclm_pb2.AskRequest(image=medclm_pb2.Image(data=data, media_type="image/png"),
                                                       question=record.question, max_tokens=48), timeout=120))
    deltas = [e.delta for e in events if e.WhichOneof("event") == "delta"]
    assert deltas and events[-1].WhichOneof("event") == "result"
    assert "".join(deltas) == events[-1].result.text
    assert events[-1].result.reasoning_steps or events[-1].result.answer


def test_grpc_segment_of_pydicom_ct_small_reports_organs_in_mm2(stub):
    reply = stub.Segment(medclm_pb2.SegmentRequest(image=medclm_pb2.Image(data=ct_small(),
                                                                          media_type="application/dicom"),
                                                   mask_format=medclm_pb2.MASK_FORMAT_RLE), timeout=60)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert (reply.width, reply.height, reply.modality) == (ds.Columns, ds.Rows, "ct")
    assert reply.pixel_spacing_mm.row_mm == pytest.approx(float(ds.PixelSpacing[0]))
    assert reply.organs and reply.model == "organ_seg_ct"
    for organ in reply.organs:
        mask = decode_rle(list(organ.mask_rle), reply.height, reply.width)
        assert mask.sum() == organ.pixel_count
        spacing = float(ds.PixelSpacing[0]) * float(ds.PixelSpacing[1])
        assert organ.area_mm2 == pytest.approx(organ.pixel_count * spacing, rel=1e-3)


def test_grpc_list_models_and_health(stub, service):
    names = {m.name: m for m in stub.ListModels(medclm_pb2.ListModelsRequest(), timeout=10).models}
    assert {"medclm", "organ_seg_ct", "organ_seg_cxr", "organ_seg_ct_int8"} <= set(names)
    assert names["medclm"].kind == "vqa" and names["medclm"].ready and names["organ_seg_ct"].engine == "onnxruntime"
    with grpc.insecure_channel(service.grpc_address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING


# --- HTTP ---------------------------------------------------------------------------------------------------
def test_http_ask_json_and_multipart_on_a_dicom_larger_than_the_model_input(http, medclm_dataset, memorised):
    record = next(r for r in memorised if r.modality == "ct")
    dicom = dicom_from_phantom(medclm_dataset, record)
    reply = http.post("/v1/ask", json={"image": image_body(dicom, "application/dicom"), "question": record.question})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["width"], body["height"], body["modality"]) == (256, 256, "ct")
    assert body["text"] == record.target  # the DICOM path reaches the model exactly as the training PNG did
    assert_boxes_in_original_pixels(body["findings"], 256, 256)
    assert _corners(body["findings"][0]["box_norm"]) == tuple(record.findings[0].box)
    assert reply.headers["x-request-id"] == body["request_id"]
    multipart = http.post("/v1/ask", files={"image": ("slice.dcm", dicom, "application/dicom")},
                          data={"question": record.question})
    assert multipart.status_code == 200, multipart.text
    assert multipart.json()["text"] == body["text"]


def test_http_ask_stream_is_server_sent_events(http, grounding_case):
    record, data, _ = grounding_case
    with http.stream("POST", "/v1/ask/stream", json={"image": image_body(data, "image/png"),
                                                     "question": record.question, "max_tokens": 32}) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        text = "".join(reply.iter_text())
    events = [block for block in text.split("\n\n") if block.strip()]
    kinds = [block.split("\n")[0].removeprefix("event: ") for block in events]
    assert kinds[0] == "delta" and kinds[-2:] == ["result", "done"]
    result = json.loads(events[-2].split("data: ", 1)[1])
    deltas = "".join(json.loads(b.split("data: ", 1)[1])["text"] for b, k in zip(events, kinds) if k == "delta")
    assert deltas == result["text"]


def test_http_segment_png_masks_and_models_and_health(http):
    reply = http.post("/v1/segment", json={"image": image_body(ct_small(), "application/dicom"), "precision": "int8"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == "organ_seg_ct_int8" and body["organs"]
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["organs"][0]["mask_png_base64"]))))
    assert mask.shape == (body["height"], body["width"]) and (mask > 0).sum() == body["organs"][0]["pixel_count"]
    models = http.get("/v1/models").json()
    assert "medclm" in {m["id"] for m in models["data"]}
    assert http.get("/health/live").status_code == 200 and http.get("/health/ready").status_code == 200


def test_openai_client_chat_completion_with_an_image(service, grounding_case):
    record, data, _ = grounding_case
    client = OpenAI(base_url=f"{service.http_url}/v1", api_key="unused", max_retries=0)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": record.question}]}]
    completion = client.chat.completions.create(model="medclm", messages=messages, max_tokens=40, temperature=0)
    assert completion.choices[0].message.content and completion.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model="medclm", messages=messages, max_tokens=40, temperature=0,
                                                 stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == completion.choices[0].message.content


def test_metrics_count_requests_and_time_to_first_token(http):
    text = http.get("/metrics").text
    assert 'medclm_requests_total{code="200",route="/v1/ask",transport="http"}' in text
    assert "medclm_time_to_first_token_seconds_count" in text
    assert 'medclm_requests_total{code="OK",route="/medclm.v1.MedCLM/Ask",transport="grpc"}' in text


# --- DICOM and bad input on both transports --------------------------------------------------------------------
BAD_INPUTS = [
    # (name, image bytes, media type, question, extra options, HTTP status, gRPC code, text in the message)
    ("mr refused by modality", mr_small(), "application/dicom", "Any lesion?", {}, 400, "INVALID_ARGUMENT", "MR"),
    ("dicom with short pixel data", truncated_dicom(), "application/dicom", "Any lesion?", {}, 400,
     "INVALID_ARGUMENT", "pixel data"),
    ("empty image", b"", "image/png", "Any lesion?", {}, 400, "INVALID_ARGUMENT", ""),
    ("corrupt png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image/png", "Any lesion?", {}, 400, "INVALID_ARGUMENT", ""),
    ("unsupported media type", b"GIF89a....", "image/gif", "Any lesion?", {}, 400, "INVALID_ARGUMENT", ""),
    ("empty question", ct_small(), "application/dicom", "  ", {}, 400, "INVALID_ARGUMENT", "question"),
    ("over-long question", ct_small(), "application/dicom", "why " * 1000, {}, 400, "INVALID_ARGUMENT", "question"),
    ("unknown model", ct_small(), "application/dicom", "Any lesion?", {"model": "medclm_huge"}, 404, "NOT_FOUND", ""),
    ("unknown variant", ct_small(), "application/dicom", "Any lesion?", {"precision": "fp8"}, 400,
     "INVALID_ARGUMENT", ""),
    ("max_tokens out of range", ct_small(), "application/dicom", "Any lesion?", {"max_tokens": 100000}, 400,
     "INVALID_ARGUMENT", "max_tokens"),
    ("decompression bomb", bomb_png(), "image/png", "Any lesion?", {}, 413, "RESOURCE_EXHAUSTED", ""),
]


@pytest.mark.parametrize("name, data, media_type, question, extra, status, code, text", BAD_INPUTS,
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_a_clear_client_error_on_both_transports(http, stub, name, data, media_type, question, extra,
                                                              status, code, text):
    reply = http.post("/v1/ask", json={"image": image_body(data, media_type), "question": question, **extra})
    assert reply.status_code in ((status, 422) if status == 400 else (status,)), reply.text
    error = reply.json()["error"]
    assert error["request_id"] and error["message"] and "Traceback" not in error["message"]
    assert text.lower() in error["message"].lower()
    request = medclm_pb2.AskRequest(image=medclm_pb2.Image(data=data, media_type=media_type), question=question,
                                    **extra)
    with pytest.raises(grpc.RpcError) as failure:
        stub.Ask(request, timeout=60)
    assert failure.value.code().name == code and text.lower() in failure.value.details().lower()


def test_deadlines_on_both_transports(http, stub, grounding_case):
    record, data, _ = grounding_case
    reply = http.post("/v1/ask", json={"image": image_body(data, "image/png"), "question": record.question},
                      headers={"X-Request-Timeout": "0.001"})
    assert reply.status_code == 504 and reply.json()["error"]["code"] == "DEADLINE_EXCEEDED"
    with pytest.raises(grpc.RpcError) as failure:
        stub.Ask(medclm_pb2.AskRequest(image=medclm_pb2.Image(data=data, media_type="image/png"),
                                       question=record.question, max_tokens=400), timeout=0.05)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_burst_beyond_the_admission_limit_is_refused_on_both_transports(service, grounding_case):
    """The test service admits 2 running + 2 waiting VQA requests; a burst of 12 sees refusals, never errors."""
    record, data, _ = grounding_case
    body = {"image": image_body(data, "image/png"), "question": record.question, "max_tokens": 400,
            "temperature": 1.0, "seed": 1}

    def http_call(_):
        reply = httpx.post(f"{service.http_url}/v1/ask", json=body, timeout=300)
        return reply.status_code, reply.headers.get("retry-after")

    def grpc_call(_):
        with grpc.insecure_channel(service.grpc_address) as channel:
            try:
                medclm_pb2_grpc.MedCLMStub(channel).Ask(medclm_pb2.AskRequest(
                    image=medclm_pb2.Image(data=data, media_type="image/png"), question=record.question,
                    max_tokens=400, temperature=1.0, seed=1), timeout=300)
                return "OK"
            except grpc.RpcError as error:
                return error.code().name

    with ThreadPoolExecutor(12) as pool:
        http_results = list(pool.map(http_call, range(12)))
    with ThreadPoolExecutor(12) as pool:
        grpc_results = list(pool.map(grpc_call, range(12)))
    assert {s for s, _ in http_results} <= {200, 429} and any(s == 429 for s, _ in http_results)
    assert all(r is not None for s, r in http_results if s == 429)  # Retry-After on every refusal
    assert set(grpc_results) <= {"OK", "RESOURCE_EXHAUSTED"} and "RESOURCE_EXHAUSTED" in grpc_results
    assert httpx.get(f"{service.http_url}/health/ready").status_code == 200


def test_pydicom_ct_small_goes_through_ask(http):
    reply = http.post("/v1/ask", json={"image": image_body(ct_small(), "application/dicom"),
                                       "question": "Is any focal lesion visible in the liver?", "max_tokens": 64})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["width"], body["height"], body["modality"]) == (128, 128, "ct") and body["text"]


def test_command_line_client_prints_reasoning_answer_and_boxes(service, memorised, medclm_dataset):
    import subprocess
    import sys

    record = next(r for r in memorised if r.modality == "cxr")
    for transport in (["--grpc", service.grpc_address], ["--http", service.http_url]):
        done = subprocess.run([sys.executable, "-m", "service.client", "ask", str(medclm_dataset / record.image),
                               record.question, "--modality", "cxr", *transport],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"Answer: {record.answer}" in done.stdout and "Reasoning:" in done.stdout
        x1, y1, x2, y2 = denormalize_box(record.findings[0].box, record.width, record.height)
        assert f"x1={x1:.1f} y1={y1:.1f} x2={x2:.1f} y2={y2:.1f} px" in done.stdout
    missing = subprocess.run([sys.executable, "-m", "service.client", "ask", "/nonexistent.png", "q",
                              "--grpc", service.grpc_address], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
