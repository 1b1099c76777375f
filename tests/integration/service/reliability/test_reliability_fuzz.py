"""Hypothesis-generated hostile and broken input on both transports of real services: random and truncated
bytes, PNGs whose header lies (sizes, bit depths, CRCs), DICOMs without pixel data or with the wrong amount,
impossible geometry, NaN/inf in float pixels and header values, huge declared sizes, and out-of-range or
ill-typed request fields. Every answer is a success or a client error (HTTP 2xx/4xx, gRPC OK or a client
status), never 500 / INTERNAL, and the server is healthy afterwards.

Segment is fuzzed against a service without a VQA model and small limits; Ask against the shared service.
Examples are bounded (``max_examples``) so the module stays fast.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import grpc
import httpx
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file

from service.grpc.gen import medclm_pb2, medclm_pb2_grpc
from tests.integration.service.reliability.reliability_support import (segment_only_args, segmenter_repository,
                                                                       wait_until)
from tests.support.service_process import start_service

pytestmark = [pytest.mark.timeout(900),
              pytest.mark.filterwarnings("ignore::UserWarning")]  # pydicom warns about the invalid values we write

HTTP_CLIENT_ERRORS = {400, 404, 413, 422}
GRPC_ACCEPTABLE = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                   grpc.StatusCode.RESOURCE_EXHAUSTED}
FUZZ = settings(max_examples=40, deadline=None, database=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


# --- valid seeds the strategies break -------------------------------------------------------------------------
def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (64, 1))).save(buffer, format="JPEG")
    return buffer.getvalue()


CT_SMALL = open(get_testdata_file("CT_small.dcm"), "rb").read()
PNG_8 = _png(np.tile(np.arange(96, dtype=np.uint8), (80, 1)))
PNG_16 = _png((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 7 + 24))
JPEG = _jpeg()
VALID_FILES = {"application/dicom": CT_SMALL, "image/png": PNG_8, "image/jpeg": JPEG}


def _chunk(kind: bytes, payload: bytes, good_crc: bool = True) -> bytes:
    crc = zlib.crc32(kind + payload) if good_crc else zlib.crc32(payload) ^ 0xDEADBEEF
    return len(payload).to_bytes(4, "big") + kind + payload + crc.to_bytes(4, "big")


@st.composite
def lying_pngs(draw) -> bytes:
    """A PNG signature and IHDR whose size, depth and colour type are drawn, then drawn pixel bytes."""
    width = draw(st.one_of(st.integers(0, 300), st.integers(0, 2**31 - 1), st.just(2**32 - 1)))
    height = draw(st.one_of(st.integers(0, 300), st.integers(0, 2**31 - 1)))
    depth = draw(st.sampled_from([1, 2, 4, 8, 16, 0, 3, 255]))
    colour = draw(st.sampled_from([0, 2, 3, 4, 6, 1, 7]))
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, draw(st.sampled_from([0, 1])))
    rows = draw(st.binary(max_size=600))
    data = zlib.compress(rows) if draw(st.booleans()) else rows
    end = _chunk(b"IEND", b"") if draw(st.booleans()) else b""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header, draw(st.booleans())) + _chunk(b"IDAT", data) + end)


def _dicom_bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@st.composite
def broken_dicoms(draw) -> bytes:
    """CT_small with drawn geometry, pixel format, pixel data length, frames and float values."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if draw(st.booleans()):
        ds.Rows = draw(st.sampled_from([0, 1, 127, 128, 129, 4096, 65535]))
        ds.Columns = draw(st.sampled_from([0, 1, 128, 255, 65535]))
    if draw(st.booleans()):
        ds.NumberOfFrames = draw(st.sampled_from(["0", "1", "2", "-3", "99999", "2147483647"]))
    if draw(st.booleans()):
        ds.BitsAllocated = draw(st.sampled_from([1, 8, 12, 16, 32, 64]))
        ds.BitsStored = draw(st.sampled_from([1, 8, 12, 16, 32]))
        ds.SamplesPerPixel = draw(st.sampled_from([1, 3, 4]))
        ds.PhotometricInterpretation = draw(st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR",
                                                             "YBR_FULL", "BOGUS"]))
    choice = draw(st.sampled_from(["keep", "drop", "truncate", "extend", "float"]))
    if choice == "drop":
        del ds.PixelData
    elif choice == "truncate":
        ds.PixelData = ds.PixelData[: draw(st.integers(0, len(ds.PixelData) - 1))]
    elif choice == "extend":
        ds.PixelData = ds.PixelData + b"\x00" * draw(st.integers(1, 4096))
    elif choice == "float":
        del ds.PixelData
        values = draw(st.lists(st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0, 1e38, -1e38]),
                               min_size=1, max_size=8))
        # capped: at 65535 x 65535 the test itself would build 17 GB; a capped buffer is then the wrong length,
        # which is hostile input of its own
        count = min(int(ds.Rows) * int(ds.Columns), 512 * 512)
        ds.BitsAllocated = 32
        ds.FloatPixelData = np.resize(np.array(values, dtype=np.float32), count).tobytes()
    if draw(st.booleans()):
        ds.RescaleSlope = draw(st.sampled_from(["NaN", "inf", "0", "-1", "1e300"]))
    if draw(st.booleans()):
        ds.WindowWidth = draw(st.sampled_from(["NaN", "0", "-5", "1e400"]))
        ds.WindowCenter = draw(st.sampled_from(["NaN", "inf", "40"]))
    if draw(st.booleans()):
        ds.PixelSpacing = draw(st.sampled_from([["nan", "nan"], ["inf", "1"], ["0", "0"], ["-1", "2"]]))
    if draw(st.booleans()):
        del ds.Modality
    return _dicom_bytes(ds)


@st.composite
def truncated_or_mutated(draw) -> bytes:
    """A valid file cut short, or with a few bytes overwritten."""
    data = bytearray(draw(st.sampled_from([CT_SMALL, PNG_8, PNG_16, JPEG])))
    if draw(st.booleans()):
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


IMAGE_BYTES = st.one_of(st.binary(max_size=2048), truncated_or_mutated(), lying_pngs(), broken_dicoms(),
                        st.sampled_from([CT_SMALL, PNG_8, PNG_16, JPEG]))
MEDIA_TYPES = st.one_of(st.sampled_from(["application/dicom", "image/png", "image/jpeg"]),
                        st.sampled_from(["", "image/gif", "text/plain", "IMAGE/PNG", "image/png; x=1"]),
                        st.text(max_size=20))
SHORT_TEXT = st.one_of(st.sampled_from(["", "fp32", "fp16", "int8", "bf16", "organ_seg_ct", "medclm"]),
                       st.text(max_size=30))


def mostly(valid: st.SearchStrategy, broken: st.SearchStrategy) -> st.SearchStrategy:
    """``valid`` seven times in eight, else ``broken``: each option is broken now and then, so most examples
    get past option checking to image decoding and the engines, while every option is still exercised."""
    return st.integers(0, 7).flatmap(lambda n: broken if n == 0 else valid)


SEGMENT_PRECISIONS = mostly(st.sampled_from(["", "fp32"]), SHORT_TEXT)
ASK_PRECISIONS = mostly(st.sampled_from(["", "fp32"]), SHORT_TEXT)
MODELS = mostly(st.just(""), SHORT_TEXT)


def paired_media_type(data: bytes) -> st.SearchStrategy[str]:
    """Mostly the media type the bytes really have (so decoding is reached), sometimes any."""
    sniffed = ("image/png" if data.startswith(b"\x89PNG") else "image/jpeg" if data.startswith(b"\xff\xd8")
               else "application/dicom")
    return mostly(st.just(sniffed), MEDIA_TYPES)


MODALITY_HINTS = mostly(st.sampled_from(["", "ct", "cxr"]), st.sampled_from(["mr", "CT", "x", "\x00"]))


# --- checks ---------------------------------------------------------------------------------------------------
def assert_http_client_error_or_success(reply: httpx.Response) -> None:
    detail = reply.json().get("error", {}).get("message", "")[:40] if reply.status_code != 200 else ""
    event(f"HTTP {reply.status_code} {detail}".rstrip())
    assert reply.status_code == 200 or reply.status_code in HTTP_CLIENT_ERRORS, (reply.status_code, reply.text[:500])
    if reply.status_code != 200:
        error = reply.json()["error"]
        assert error["code"] != "INTERNAL" and error["request_id"] and "Traceback" not in error["message"]


def grpc_status(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        assert "Traceback" not in (error.details() or "")
        event(f"gRPC {error.code().name}: {(error.details() or '')[:40]}")
        return error.code()
    event("gRPC OK")
    return grpc.StatusCode.OK


def assert_healthy(url: str, ready: bool = True) -> None:
    assert httpx.get(f"{url}/health/live", timeout=10).status_code == 200
    if ready:
        wait_until(lambda: httpx.get(f"{url}/health/ready", timeout=10).status_code == 200, "readiness",
                   timeout_s=30)


# --- Segment, on a service without a VQA model ------------------------------------------------------------------
@pytest.fixture(scope="module")
def segmenter_service(tmp_path_factory):
    repository = segmenter_repository(tmp_path_factory.mktemp("fuzz") / "model_repository")
    service = start_service(segment_only_args(repository, "--max-request-bytes", str(512 * 1024),
                                              "--max-image-pixels", "200000"))
    yield service
    service.stop()


@FUZZ
@given(data=st.data())
def test_segment_over_http_never_fails_with_a_server_error(segmenter_service, data):
    image = data.draw(IMAGE_BYTES, "image bytes")
    body = {"image": {"data_base64": base64.b64encode(image).decode(),
                      "media_type": data.draw(paired_media_type(image), "media type"),
                      "frame": data.draw(mostly(st.just(0), st.integers(-2, 5)), "frame"),
                      "modality": data.draw(MODALITY_HINTS, "modality")},
            "precision": data.draw(SEGMENT_PRECISIONS, "precision"), "model": data.draw(MODELS, "model"),
            "mask_format": data.draw(mostly(st.sampled_from(["png", "rle"]), st.sampled_from(["", "jpeg"])),
                                     "mask format")}
    if data.draw(st.booleans(), "multipart"):
        fields = {k: str(v) for k, v in body["image"].items() if k != "data_base64"}
        fields.update({k: v for k, v in body.items() if k != "image"})
        reply = httpx.post(f"{segmenter_service.http_url}/v1/segment", files={"image": ("x", image)}, data=fields,
                           timeout=60)
    else:
        reply = httpx.post(f"{segmenter_service.http_url}/v1/segment", json=body, timeout=60)
    assert_http_client_error_or_success(reply)


@FUZZ
@given(data=st.data())
def test_segment_over_grpc_never_fails_with_a_server_error(segmenter_service, data):
    image = data.draw(IMAGE_BYTES, "image bytes")
    request = medclm_pb2.SegmentRequest(
        image=medclm_pb2.Image(data=image, media_type=data.draw(paired_media_type(image), "media type"),
                               frame=data.draw(mostly(st.just(0), st.integers(0, 2**32 - 1)), "frame"),
                               modality=data.draw(MODALITY_HINTS, "modality")),
        precision=data.draw(SEGMENT_PRECISIONS, "precision"), model=data.draw(MODELS, "model"),
        mask_format=data.draw(mostly(st.sampled_from([0, 1, 2]), st.integers(3, 2**31 - 1)), "mask format"))
    with grpc.insecure_channel(segmenter_service.grpc_address) as channel:
        stub = medclm_pb2_grpc.MedCLMStub(channel)
        assert grpc_status(lambda: stub.Segment(request, timeout=60)) in GRPC_ACCEPTABLE


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                         max_size=4),
                           max_leaves=12)


@FUZZ
@given(path=st.sampled_from(["/v1/segment", "/v1/ask", "/v1/ask/stream", "/v1/chat/completions"]),
       body=st.one_of(st.binary(max_size=512), JSON_VALUES.map(lambda v: json.dumps(v).encode())),
       content_type=st.sampled_from(["application/json", "multipart/form-data; boundary=x", "text/plain", ""]))
def test_malformed_bodies_are_client_errors(segmenter_service, path, body, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    reply = httpx.post(f"{segmenter_service.http_url}{path}", content=body, headers=headers, timeout=60)
    assert_http_client_error_or_success(reply)


def test_the_segmenter_service_is_healthy_after_fuzzing(segmenter_service):
    assert_healthy(segmenter_service.http_url)
    reply = httpx.post(f"{segmenter_service.http_url}/v1/segment",
                       json={"image": {"data_base64": base64.b64encode(CT_SMALL).decode()}}, timeout=60)
    assert reply.status_code == 200 and reply.json()["organs"]


# --- Ask, on the shared service --------------------------------------------------------------------------------
GOOD_QUESTION = "Where is the lesion?"
QUESTIONS = mostly(st.just(GOOD_QUESTION),
                   st.one_of(st.sampled_from(["", "   ", "why " * 600, "a\x00b", "\u202e\ufeff?"]),
                             st.text(max_size=80), st.text(alphabet=st.characters(max_codepoint=31), max_size=10)))
FLOATS = mostly(st.sampled_from([0.0, 0.7]), st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                                       st.sampled_from([2.0, 2.0001, -0.1])))
SEEDS = mostly(st.one_of(st.none(), st.integers(0, 100)), st.integers(-2**70, 2**70))


def ask_image(data) -> bytes:
    # mostly a valid image, so the question and sampling fields are what reaches the core
    return data.draw(st.one_of(st.just(CT_SMALL), st.just(PNG_8), IMAGE_BYTES), "image bytes")


@FUZZ
@given(data=st.data())
def test_ask_over_http_never_fails_with_a_server_error(service, data):
    image = ask_image(data)
    body = {"image": {"data_base64": base64.b64encode(image).decode(),
                      "media_type": data.draw(paired_media_type(image), "media type")},
            "question": data.draw(QUESTIONS, "question"),
            "max_tokens": data.draw(mostly(st.integers(1, 8), st.one_of(st.none(), st.integers(-5, 0),
                                                                         st.integers(-2**70, 2**70))), "max"),
            "temperature": data.draw(FLOATS, "temperature"),
            "seed": data.draw(SEEDS, "seed"),
            "precision": data.draw(ASK_PRECISIONS, "precision"), "model": data.draw(MODELS, "model"),
            "brief": data.draw(st.booleans(), "brief"), "verify_grounding": data.draw(st.booleans(), "grounding")}
    # Python's json writes NaN/Infinity tokens, which some JSON parsers accept: the core must still refuse them
    reply = httpx.post(f"{service.http_url}/v1/ask", content=json.dumps(body).encode(),
                       headers={"Content-Type": "application/json"}, timeout=120)
    assert_http_client_error_or_success(reply)


@FUZZ
@given(data=st.data())
def test_ask_over_grpc_never_fails_with_a_server_error(service, data):
    image = ask_image(data)
    request = medclm_pb2.AskRequest(
        image=medclm_pb2.Image(data=image, media_type=data.draw(paired_media_type(image), "media type")),
        question=data.draw(QUESTIONS, "question"), precision=data.draw(ASK_PRECISIONS, "precision"),
        model=data.draw(MODELS, "model"), brief=data.draw(st.booleans(), "brief"),
        max_tokens=data.draw(mostly(st.integers(1, 8), st.integers(0, 2**32 - 1)), "max"),
        temperature=data.draw(FLOATS, "temperature"),
        seed=data.draw(mostly(st.integers(0, 100), st.integers(-2**63, 2**63 - 1)), "seed"),
        verify_grounding=data.draw(st.booleans(), "grounding"))
    with grpc.insecure_channel(service.grpc_address) as channel:
        stub = medclm_pb2_grpc.MedCLMStub(channel)
        if data.draw(st.booleans(), "stream"):
            status = grpc_status(lambda: list(stub.AskStream(request, timeout=120)))
        else:
            status = grpc_status(lambda: stub.Ask(request, timeout=120))
    assert status in GRPC_ACCEPTABLE


def test_the_shared_service_is_healthy_after_fuzzing(service):
    assert_healthy(service.http_url)
    body = {"image": {"data_base64": base64.b64encode(CT_SMALL).decode()}, "question": "Where is the lesion?",
            "max_tokens": 8}
    reply = httpx.post(f"{service.http_url}/v1/ask", json=body, timeout=120)
    assert reply.status_code == 200
