"""Every failure has the shared error body and the status of service.errors.HTTP_STATUS."""

from __future__ import annotations

import base64
import logging

import pytest

from service.errors import HTTP_STATUS, INTERNAL_MESSAGE, ErrorCode, ServiceError
from tests.unit.service.http.fake_core import ask_json, data_url, png_bytes

RETRY_AFTER_CODES = (ErrorCode.OVERLOADED, ErrorCode.UNAVAILABLE)


def chat_body() -> dict:
    return {"model": "medclm", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "q"}, {"type": "image_url", "image_url": {"url": data_url()}}]}]}


ROUTES = {
    "ask": ("/v1/ask", ask_json),
    "ask_stream": ("/v1/ask/stream", ask_json),
    "segment": ("/v1/segment", lambda: {"image": ask_json()["image"]}),
    "chat": ("/v1/chat/completions", chat_body),
}


@pytest.mark.parametrize("code", list(ErrorCode))
@pytest.mark.parametrize("route", list(ROUTES))
def test_every_error_code_maps_to_its_status_and_body(client, fake_core, code, route):
    retry_after = 2.5 if code in RETRY_AFTER_CODES else None
    fake_core.error = ServiceError(code, f"message for {code.value}", field="question", retry_after=retry_after)
    path, body = ROUTES[route]

    response = client.post(path, json=body(), headers={"X-Request-ID": f"err-{code.value}"})

    assert response.status_code == HTTP_STATUS[code]
    expected_message = INTERNAL_MESSAGE if code is ErrorCode.INTERNAL else f"message for {code.value}"
    assert response.json() == {"error": {"code": code.value, "message": expected_message, "field": "question",
                                         "request_id": f"err-{code.value}"}}
    assert response.headers["x-request-id"] == f"err-{code.value}"
    if retry_after is None:
        assert "retry-after" not in response.headers
    else:
        assert response.headers["retry-after"] == "3"  # whole seconds, rounded up


def test_streamed_chat_error_before_the_first_chunk_keeps_its_status(client, fake_core):
    fake_core.error = ServiceError(ErrorCode.OVERLOADED, "queue full", retry_after=1)

    response = client.post("/v1/chat/completions", json={**chat_body(), "stream": True})

    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "OVERLOADED"


def test_schema_errors_are_422_with_the_field_path(client, fake_core):
    missing = client.post("/v1/ask", json={"image": ask_json()["image"]})
    wrong_type = client.post("/v1/ask", json=ask_json(image={"data_base64": "aGk=", "frame": "first"}))
    unknown = client.post("/v1/ask", json=ask_json(temprature=0.3))
    bad_format = client.post("/v1/ask", json=ask_json(output_formats=["dicom-xml"]))
    bad_json = client.post("/v1/ask", content=b"{not json", headers={"Content-Type": "application/json"})

    for response in (missing, wrong_type, unknown, bad_format, bad_json):
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "INVALID_ARGUMENT" and error["request_id"] == response.headers["x-request-id"]
    assert missing.json()["error"]["field"] == "question"
    assert wrong_type.json()["error"]["field"] == "image.frame"
    assert unknown.json()["error"]["field"] == "temprature"
    assert bad_format.json()["error"]["field"] == "output_formats[0]"
    assert fake_core.asks == []


def test_chat_schema_error_is_422_with_indexed_field(client):
    response = client.post("/v1/chat/completions", json={"messages": [{"content": "no role"}]})

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "messages[0].role"


def test_multipart_field_errors_are_422(client):
    response = client.post("/v1/ask", files={"image": ("a.png", png_bytes(), "image/png")},
                           data={"question": "q", "max_tokens": "many"})

    assert response.status_code == 422 and response.json()["error"]["field"] == "max_tokens"


@pytest.mark.parametrize("data", ["not base64 at all!", "QUJDRA", ""])
def test_bad_base64_is_400_on_image_data_base64(client, fake_core, data):
    response = client.post("/v1/ask", json=ask_json(image={"data_base64": data}))

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("INVALID_ARGUMENT", "image.data_base64")
    assert fake_core.asks == []


def test_bytes_that_are_no_image_need_a_media_type(client):
    response = client.post("/v1/ask", json=ask_json(image={"data_base64": base64.b64encode(b"hello").decode()}))

    assert response.status_code == 400 and response.json()["error"]["field"] == "image.media_type"


def test_multipart_without_image_part_and_unknown_content_type_are_400(client):
    no_file = client.post("/v1/ask", data={"question": "q", "image": "text, not a file"},
                          files={"other": ("x", b"x")})
    text_body = client.post("/v1/ask", content=b"question=q", headers={"Content-Type": "text/plain"})

    assert no_file.status_code == 400 and no_file.json()["error"]["field"] == "image"
    assert text_body.status_code == 400 and text_body.json()["error"]["field"] == "Content-Type"


@pytest.mark.parametrize("value", ["soon", "0", "-3", "nan", "inf"])
def test_bad_timeout_header_is_400(client, fake_core, value):
    response = client.post("/v1/ask", json=ask_json(), headers={"X-Request-Timeout": value})

    assert response.status_code == 400 and response.json()["error"]["field"] == "X-Request-Timeout"
    assert fake_core.asks == []


def test_unknown_exception_is_500_internal_error_logged_once_with_traceback(client, fake_core, caplog):
    fake_core.unexpected = RuntimeError("secret detail from deep inside")

    with caplog.at_level(logging.ERROR, logger="medclm.http"):
        response = client.post("/v1/ask", json=ask_json(), headers={"X-Request-ID": "boom-1"})

    assert response.status_code == 500
    assert response.json() == {"error": {"code": "INTERNAL", "message": "internal error", "field": None,
                                         "request_id": "boom-1"}}
    assert "secret" not in response.text and "Traceback" not in response.text
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info and errors[0].exc_info[0] is RuntimeError
    assert errors[0].request_id == "boom-1"


def test_unknown_route_and_wrong_method_use_the_error_body(client):
    missing = client.get("/v1/nothing-here")
    wrong_method = client.get("/v1/ask")

    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "INVALID_ARGUMENT"
    assert wrong_method.json()["error"]["request_id"] == wrong_method.headers["x-request-id"]


def test_unknown_model_id_is_404(client):
    response = client.get("/v1/models/not-a-model")

    assert response.status_code == 404 and response.json()["error"]["field"] == "model_id"
