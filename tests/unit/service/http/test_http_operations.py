"""Health, metrics, models, OpenAPI, request ids and the JSON access log."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from service.http.app import create_app
from service.http.middleware import sanitize_request_id
from service.logging import configure_logging
from tests.support.http_server import serve_http
from tests.unit.service.http.fake_core import ask_json, data_url

API_ROUTES = ("/v1/ask", "/v1/ask/stream", "/v1/segment", "/v1/chat/completions", "/v1/models",
              "/v1/models/{model_id}", "/health/live", "/health/ready")


def test_health_follows_the_core_readiness(client, fake_core):
    fake_core.is_ready = False
    not_ready = client.get("/health/ready")
    live_meanwhile = client.get("/health/live")
    fake_core.is_ready = True
    ready = client.get("/health/ready")

    assert (not_ready.status_code, not_ready.json()) == (503, {"status": "not ready"})
    assert live_meanwhile.status_code == 200
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


def test_metrics_count_requests_by_route_template_and_code(client, fake_core):
    client.post("/v1/ask", json=ask_json())
    client.get("/v1/models/medclm")
    client.get("/v1/models/unknown")
    client.get("/no/such/path/12345")

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    text = response.text
    assert 'medclm_requests_total{code="200",route="/v1/ask",transport="http"} 1.0' in text
    assert 'medclm_requests_total{code="200",route="/v1/models/{model_id}",transport="http"} 1.0' in text
    assert 'medclm_requests_total{code="404",route="/v1/models/{model_id}",transport="http"} 1.0' in text
    assert 'route="unmatched"' in text and "12345" not in text  # raw paths never become labels
    assert 'medclm_request_latency_seconds_count{route="/v1/ask",transport="http"} 1.0' in text
    assert 'medclm_in_flight_requests{transport="http"} 1.0' in text  # the scrape itself


def test_models_list_has_openai_shape_and_our_fields(client):
    body = client.get("/v1/models").json()

    assert body["object"] == "list"
    first = body["data"][0]
    assert {k: first[k] for k in ("id", "object", "owned_by", "kind", "precision", "modalities", "ready")} == {
        "id": "medclm", "object": "model", "owned_by": "medclm", "kind": "vqa", "precision": "fp32",
        "modalities": ["ct", "cxr"], "ready": True}
    assert isinstance(first["created"], int) and first["fingerprint"] == "0123456789abcdef"


def test_openapi_lists_the_routes_and_both_body_types(client):
    document = client.get("/openapi.json").json()

    assert document["info"]["title"] == "MedCLM service"
    for route in API_ROUTES:
        assert route in document["paths"], route
    ask_body = document["paths"]["/v1/ask"]["post"]["requestBody"]["content"]
    assert ask_body["application/json"]["schema"] == {"$ref": "#/components/schemas/AskRequestBody"}
    form = ask_body["multipart/form-data"]["schema"]
    assert form["properties"]["image"]["format"] == "binary" and {"image", "question"} <= set(form["required"])
    schemas = document["components"]["schemas"]
    assert {"AskRequestBody", "ImageBody", "SegmentRequestBody", "AskResponseBody", "ErrorBody",
            "ChatCompletionRequest"} <= set(schemas)
    assert "data_base64" in schemas["ImageBody"]["properties"]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(("given", "expected"), [
    ("abc-123_x.y", "abc-123_x.y"),
    ("a b/c<script>", "abcscript"),
    ("z" * 100, "z" * 64),
])
def test_request_id_header_is_sanitised_and_echoed(client, given, expected):
    response = client.get("/health/live", headers={"X-Request-ID": given})

    assert response.headers["x-request-id"] == expected


def test_request_id_is_generated_when_missing_or_unusable():
    generated = sanitize_request_id(None)
    assert len(generated) == 32 and int(generated, 16) >= 0
    assert len(sanitize_request_id("///")) == 32
    assert sanitize_request_id(None) != generated


def test_json_access_log_has_the_fields_and_never_the_request_content(fake_core, settings, metrics):
    stream = io.StringIO()
    root = logging.getLogger()
    old_level = root.level
    handler = configure_logging("INFO", stream)
    question = "SECRET-QUESTION about patient Jane Doe"
    image_url = data_url()
    try:
        with serve_http(create_app(fake_core, settings, metrics)) as server:
            with httpx.Client(base_url=server.base_url, timeout=30.0) as http:
                http.post("/v1/ask", json=ask_json(question=question), headers={"X-Request-ID": "log-1"})
                http.post("/v1/chat/completions", headers={"X-Request-ID": "log-2"}, json={"messages": [
                    {"role": "user", "content": [{"type": "text", "text": question},
                                                 {"type": "image_url", "image_url": {"url": image_url}}]}]})
        # the server has stopped: every line it logs has been written
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)

    output = stream.getvalue()
    assert "SECRET" not in output and "Jane" not in output
    assert ask_json()["image"]["data_base64"][:40] not in output
    lines = [json.loads(line) for line in output.splitlines()]
    access = {entry["request_id"]: entry for entry in lines if entry["message"] == "request"}
    ask = access["log-1"]
    assert {"time", "level", "logger", "message", "request_id", "route", "status", "duration_ms"} <= set(ask)
    assert (ask["route"], ask["status"], ask["level"], ask["logger"]) == ("/v1/ask", 200, "INFO", "medclm.http")
    assert ask["duration_ms"] >= 0 and ask["image_media_type"] == "image/png" and ask["image_bytes"] > 0
    assert ask["content_type"] == "application/json" and ask["request_bytes"] > ask["image_bytes"]
    assert access["log-2"]["route"] == "/v1/chat/completions" and access["log-2"]["status"] == 200


def test_configure_logging_twice_keeps_one_handler():
    root = logging.getLogger()
    old_level = root.level
    first = configure_logging("DEBUG", io.StringIO())
    second = configure_logging("WARNING", io.StringIO())
    try:
        assert first not in root.handlers and second in root.handlers
        assert root.level == logging.WARNING
    finally:
        root.removeHandler(second)
        root.setLevel(old_level)
