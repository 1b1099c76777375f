"""Request limits on both transports of real services: request bytes (the 64 MiB default on the shared service,
a small configured limit on a service without a VQA model) and decoded image pixels, refused from the header
before any pixel is decoded (PNG and DICOM). Question length and the max_tokens cap are covered on both
transports by ``test_service_e2e.py::test_bad_input_is_a_clear_client_error_on_both_transports``."""

from __future__ import annotations

import io
import socket

import grpc
import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from service.grpc.gen import medclm_pb2, medclm_pb2_grpc
from tests.integration.service.reliability.reliability_support import (ct_small, image_json, segment_only_args,
                                                                       segmenter_repository)
from tests.support.service_process import start_service

pytestmark = pytest.mark.timeout(600)

MIB = 1024 * 1024
DEFAULT_LIMIT = 64 * MIB
SMALL_LIMIT = 256 * 1024
PIXEL_LIMIT = 20_000  # CT_small (128 x 128 = 16384 pixels) fits


def segment_grpc(address: str, data: bytes, media_type: str = "application/dicom"):
    """Segment over gRPC with a client that sends messages of any size (the server's limit is tested)."""
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1)]) as channel:
        return medclm_pb2_grpc.MedCLMStub(channel).Segment(medclm_pb2.SegmentRequest(
            image=medclm_pb2.Image(data=data, media_type=media_type)), timeout=120)


def grpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as failure:
        call()
    return failure.value


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    repository = segmenter_repository(tmp_path_factory.mktemp("limits") / "model_repository")
    service = start_service(segment_only_args(repository, "--max-request-bytes", str(SMALL_LIMIT),
                                              "--max-image-pixels", str(PIXEL_LIMIT)))
    yield service
    service.stop()


# --- request bytes ---------------------------------------------------------------------------------------------
def test_the_default_request_limit_is_64_mib_on_both_transports(service):
    """The shared service runs with the default: a body declaring 64 MiB + 1 is refused from its headers, a
    64 MiB + 1 gRPC message by grpc; a message just under the limit reaches the service (and is refused
    for what it holds, not for its size)."""
    head = (f"POST /v1/segment HTTP/1.1\r\nHost: medclm\r\nContent-Type: application/json\r\n"
            f"Content-Length: {DEFAULT_LIMIT + 1}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", service.http_port), timeout=30) as sock:
        sock.sendall(head)  # the body never follows: the answer must not wait for it
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")

    too_large = grpc_error(lambda: segment_grpc(service.grpc_address, b"\0" * (DEFAULT_LIMIT + 1)))
    assert too_large.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    under = grpc_error(lambda: segment_grpc(service.grpc_address, b"\0" * (DEFAULT_LIMIT - MIB), "image/png"))
    assert under.code() == grpc.StatusCode.INVALID_ARGUMENT  # the bytes are no image, but they were accepted


def test_a_dicom_element_bomb_is_refused_on_both_transports(service):
    """2 MiB of zeros parse as some 260 000 empty DICOM elements (minutes of pydicom time): refused as too
    large once the parser has read more than any real header needs."""
    bomb = b"\0" * (2 * MIB)
    reply = httpx.post(f"{service.http_url}/v1/segment", json={"image": image_json(bomb, "application/dicom")},
                       timeout=60)
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert "data elements" in reply.json()["error"]["message"]
    refused = grpc_error(lambda: segment_grpc(service.grpc_address, bomb))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "data elements" in refused.details()


def test_a_configured_request_limit_holds_on_every_upload_path(limited):
    oversized = np.random.default_rng(0).bytes(SMALL_LIMIT + 1024)
    url = limited.http_url
    json_reply = httpx.post(f"{url}/v1/segment", json={"image": image_json(oversized, "image/png")}, timeout=30)
    multipart = httpx.post(f"{url}/v1/segment", files={"image": ("x.png", oversized, "image/png")}, timeout=30)

    def chunks():
        yield b'{"image": {"data_base64": "'
        for _ in range(SMALL_LIMIT // 4096 + 2):
            yield b"A" * 4096
        yield b'"}}'

    chunked = httpx.post(f"{url}/v1/ask", content=chunks(), headers={"Content-Type": "application/json"},
                         timeout=30)  # no Content-Length: counted as it arrives
    for reply in (json_reply, multipart, chunked):
        assert reply.status_code == 413 and reply.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert str(SMALL_LIMIT) in reply.json()["error"]["message"]
    assert grpc_error(lambda: segment_grpc(limited.grpc_address, oversized)).code() == \
        grpc.StatusCode.RESOURCE_EXHAUSTED
    assert httpx.post(f"{url}/v1/segment", json={"image": image_json(ct_small(), "application/dicom")},
                      timeout=60).status_code == 200  # a normal request still passes


# --- image pixels ----------------------------------------------------------------------------------------------
def png_of(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def dicom_declaring(rows: int, columns: int, frames: str | None = None) -> bytes:
    """CT_small's header claiming ``rows x columns (x frames)`` with only its own 32 KiB of pixel data."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows, ds.Columns = rows, columns
    if frames is not None:
        ds.NumberOfFrames = frames
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


OVER_PIXEL_LIMIT = [("png 200x200", png_of(200, 200), "image/png"),
                    ("dicom 65535x65535", dicom_declaring(65535, 65535), "application/dicom"),
                    ("dicom 128x128x100 frames", dicom_declaring(128, 128, "100"), "application/dicom")]


@pytest.mark.parametrize("name, data, media_type", OVER_PIXEL_LIMIT, ids=[c[0] for c in OVER_PIXEL_LIMIT])
def test_images_over_the_pixel_limit_are_refused_from_their_header(limited, name, data, media_type):
    reply = httpx.post(f"{limited.http_url}/v1/segment", json={"image": image_json(data, media_type)}, timeout=60)
    assert reply.status_code == 413, reply.text
    error = reply.json()["error"]
    assert error["code"] == "PAYLOAD_TOO_LARGE" and error["field"] == "image" and str(PIXEL_LIMIT) in error["message"]
    failure = grpc_error(lambda: segment_grpc(limited.grpc_address, data, media_type))
    assert failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and str(PIXEL_LIMIT) in failure.details()
