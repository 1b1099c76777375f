"""/v1/ask (JSON and multipart) and /v1/ask/stream through a real server and the FakeCore."""

from __future__ import annotations

import json
import socket
import time

from service.core.types import AskRequest
from service.errors import ErrorCode, ServiceError
from tests.unit.service.http.fake_core import STREAM_DELTAS, ask_json, canned_ask_result, png_bytes


def parse_sse(text: str) -> list[tuple[str, str]]:
    """(event, data) pairs of a server-sent event stream."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields.get("event", "message"), fields["data"]))
    return events


def test_json_ask_converts_the_body_and_returns_boxes_as_objects(client, fake_core):
    before = time.monotonic()
    response = client.post("/v1/ask", json=ask_json(brief=True, max_tokens=40, temperature=0.5, seed=7,
                                                    verify_grounding=False, model="medclm_int8",
                                                    precision="int8"),
                           headers={"X-Request-ID": "case-17", "X-Request-Timeout": "12.5"})

    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "case-17"
    sent: AskRequest = fake_core.asks[0]
    assert sent.image.data == png_bytes() and sent.image.media_type == "image/png"  # detected from the bytes
    assert (sent.question, sent.reasoning, sent.max_tokens, sent.temperature, sent.seed) == (
        "Where is the lesion?", False, 40, 0.5, 7)
    assert (sent.model, sent.precision, sent.verify_grounding) == ("medclm_int8", "int8", False)
    assert sent.request_id == "case-17"
    assert before + 12.0 < sent.deadline < time.monotonic() + 12.5
    body = response.json()
    assert body["request_id"] == "case-17"
    assert body["findings"][0]["box_px"] == {"x1": 6.4, "y1": 9.6, "x2": 19.2, "y2": 19.25}
    assert body["findings"][0]["box_norm"] == {"x1": 100, "y1": 200, "x2": 300, "y2": 400}
    assert body["grounding"][0]["consistent"] is True
    assert body["usage"] == {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}
    assert body["text"] == "".join(STREAM_DELTAS) and body["answer"] == "a liver nodule."
    assert (body["width"], body["height"], body["modality"]) == (64, 48, "ct")


def test_defaults_without_options(client, fake_core):
    response = client.post("/v1/ask", json=ask_json())

    assert response.status_code == 200, response.text
    sent = fake_core.asks[0]
    assert (sent.reasoning, sent.max_tokens, sent.temperature, sent.seed, sent.deadline) == (True, 0, 0.0, None, None)
    assert len(sent.request_id) == 32 and response.headers["x-request-id"] == sent.request_id


def test_body_timeout_and_header_timeout_the_shorter_wins(client, fake_core):
    client.post("/v1/ask", json=ask_json(timeout_s=2.0), headers={"X-Request-Timeout": "30"})

    assert fake_core.asks[0].deadline < time.monotonic() + 2.0


def test_multipart_ask_with_file_and_fields(client, fake_core):
    dicom_like = b"\0" * 128 + b"DICM" + b"\1" * 32
    response = client.post("/v1/ask", files={"image": ("scan.dcm", dicom_like, "application/octet-stream")},
                           data={"question": "Is there a nodule?", "brief": "true", "max_tokens": "16",
                                 "seed": "3", "frame": "2", "output_formats": "json"})

    assert response.status_code == 200, response.text
    sent = fake_core.asks[0]
    assert sent.image.data == dicom_like and sent.image.media_type == "application/dicom"
    assert (sent.image.frame, sent.question, sent.reasoning, sent.max_tokens, sent.seed) == (
        2, "Is there a nodule?", False, 16, 3)
    assert response.json()["findings"][0]["box_norm"]["x2"] == 300


def test_multipart_media_type_field_and_part_content_type(client, fake_core):
    client.post("/v1/ask", files={"image": ("a.jpg", b"not really a jpeg", "image/jpeg")}, data={"question": "q"})
    client.post("/v1/ask", files={"image": ("a.bin", png_bytes(), "application/octet-stream")},
                data={"question": "q", "media_type": "image/png", "modality": "cxr"})

    assert fake_core.asks[0].image.media_type == "image/jpeg"
    assert (fake_core.asks[1].image.media_type, fake_core.asks[1].image.modality) == ("image/png", "cxr")


def test_stream_sends_deltas_then_result_then_done(client, fake_core):
    with client.stream("POST", "/v1/ask/stream", json=ask_json(), headers={"X-Request-ID": "s1"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(response.read().decode())

    names = [name for name, _ in events]
    assert names == ["delta"] * len(STREAM_DELTAS) + ["result", "done"]
    texts = [json.loads(data)["text"] for name, data in events if name == "delta"]
    assert texts == STREAM_DELTAS
    result = json.loads(events[-2][1])
    assert result["text"] == "".join(texts) and result["request_id"] == "s1"
    assert result["findings"][0]["box_px"]["x1"] == 6.4
    assert fake_core.stream_completed.is_set() and fake_core.stream_closed.is_set()


def test_stream_error_after_it_started_arrives_in_band(client, fake_core):
    fake_core.fail_after_first_delta = ServiceError(ErrorCode.DEADLINE_EXCEEDED, "the deadline passed")

    response = client.post("/v1/ask/stream", json=ask_json(), headers={"X-Request-ID": "s2"})

    events = parse_sse(response.text)
    assert [name for name, _ in events] == ["delta", "error", "done"]
    assert json.loads(events[1][1]) == {"error": {"code": "DEADLINE_EXCEEDED", "message": "the deadline passed",
                                                  "field": None, "request_id": "s2"}}


def test_stream_client_disconnect_closes_the_core_iterator(client, fake_core):
    fake_core.hang = True  # after the first delta the fake waits until its iterator is closed

    with client.stream("POST", "/v1/ask/stream", json=ask_json()) as response:
        lines = response.iter_lines()
        assert next(lines) == "event: delta"
        assert json.loads(next(lines).removeprefix("data: "))["text"] == STREAM_DELTAS[0]
    # leaving the block closes the connection mid-stream

    assert fake_core.stream_closed.wait(timeout=20)
    assert not fake_core.stream_completed.is_set()


def test_non_streamed_ask_is_cancelled_when_the_client_goes_away(server, fake_core):
    fake_core.hang = True
    body = json.dumps(ask_json()).encode()
    head = (f"POST /v1/ask HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()

    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + body)
        assert fake_core.started.wait(timeout=20)
    # the socket is closed while the core is still working

    assert fake_core.ask_cancelled.wait(timeout=20)


def test_canned_result_round_trip_matches_core_fields(client):
    body = client.post("/v1/ask", json=ask_json()).json()
    expected = canned_ask_result(AskRequest(image=None, question="", request_id=body["request_id"]))

    assert body["reasoning_steps"] == expected.reasoning_steps
    assert body["timings"]["engine_ms"] == expected.timings.engine_ms
    assert body["fingerprint"] == expected.fingerprint and body["finish_reason"] == "stop"
