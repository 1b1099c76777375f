"""Bodies over settings.max_request_bytes are refused with 413 before they are read."""

from __future__ import annotations

import json
import socket

import pytest

from tests.unit.service.http.fake_core import MAX_REQUEST_BYTES, ask_json, png_bytes

OVERSIZED = MAX_REQUEST_BYTES * 3


def oversized_ask() -> bytes:
    return json.dumps(ask_json(question="x" * OVERSIZED)).encode()


def assert_payload_too_large(response, fake_core) -> None:
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "PAYLOAD_TOO_LARGE" and str(MAX_REQUEST_BYTES) in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert fake_core.asks == [] and fake_core.segments == []


@pytest.mark.parametrize("path", ["/v1/ask", "/v1/ask/stream", "/v1/segment", "/v1/chat/completions"])
def test_content_length_over_the_limit_is_413(client, fake_core, path):
    response = client.post(path, content=oversized_ask(), headers={"Content-Type": "application/json"})

    assert_payload_too_large(response, fake_core)


def test_declared_length_is_refused_without_reading_the_body(server, fake_core):
    """Only the headers are sent; the answer comes anyway, so the body was never waited for."""
    head = (f"POST /v1/ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {OVERSIZED}\r\n\r\n").encode()

    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(head)
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += sock.recv(4096)

    assert reply.startswith(b"HTTP/1.1 413")
    assert fake_core.asks == []


@pytest.mark.parametrize("path", ["/v1/ask", "/v1/chat/completions"])
def test_chunked_body_over_the_limit_is_413(client, fake_core, path):
    body = oversized_ask()

    def chunks():
        for start in range(0, len(body), 1024):
            yield body[start:start + 1024]

    response = client.post(path, content=chunks(), headers={"Content-Type": "application/json"})

    assert "content-length" not in response.request.headers  # really chunked
    assert_payload_too_large(response, fake_core)


def test_chunked_multipart_over_the_limit_is_413(client, fake_core):
    big = png_bytes() + b"\0" * OVERSIZED

    def chunks():
        boundary = b"--b0undary"
        yield boundary + b'\r\nContent-Disposition: form-data; name="question"\r\n\r\nq\r\n'
        yield boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n' \
                         b'Content-Type: image/png\r\n\r\n'
        for start in range(0, len(big), 1024):
            yield big[start:start + 1024]
        yield b"\r\n" + boundary + b"--\r\n"

    response = client.post("/v1/ask", content=chunks(),
                           headers={"Content-Type": "multipart/form-data; boundary=b0undary"})

    assert_payload_too_large(response, fake_core)


def test_a_body_under_the_limit_passes(client, fake_core):
    body = json.dumps(ask_json(question="x" * (MAX_REQUEST_BYTES // 2))).encode()
    assert len(body) < MAX_REQUEST_BYTES

    def chunks():
        yield body[:100]
        yield body[100:]

    response = client.post("/v1/ask", content=chunks(), headers={"Content-Type": "application/json"})

    assert response.status_code == 200, response.text
    assert len(fake_core.asks[0].question) == MAX_REQUEST_BYTES // 2
