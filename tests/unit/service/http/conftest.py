"""A FakeCore behind the real FastAPI app, served by a real uvicorn on 127.0.0.1:0 for every test."""

from __future__ import annotations

import httpx
import pytest

from service.config import Settings
from service.http.app import create_app
from service.metrics import ServiceMetrics
from tests.support.http_server import serve_http
from tests.unit.service.http.fake_core import MAX_REQUEST_BYTES, FakeCore


@pytest.fixture
def fake_core() -> FakeCore:
    """A fresh FakeCore."""
    return FakeCore()


@pytest.fixture
def metrics() -> ServiceMetrics:
    """A fresh metrics registry."""
    return ServiceMetrics()


@pytest.fixture
def settings() -> Settings:
    """Default settings with a small request limit."""
    return Settings(max_request_bytes=MAX_REQUEST_BYTES)


@pytest.fixture
def server(fake_core, settings, metrics):
    """The real app around the fake, served by uvicorn on 127.0.0.1:0."""
    with serve_http(create_app(fake_core, settings, metrics)) as running:
        yield running


@pytest.fixture
def client(server) -> httpx.Client:
    """An httpx client for the server."""
    with httpx.Client(base_url=server.base_url, timeout=30.0) as http:
        yield http
