"""The service tests' fixtures (``service``, ``service_repository``, the MedCLM repository and sample) live in
tests/integration/conftest.py, shared with the load-harness tests; ``combined_repository`` is re-exported
here for the tests that build their own repository. ``stub`` and ``http`` are clients of that service."""

from __future__ import annotations

import grpc
import httpx
import pytest

from service.grpc.gen import medclm_pb2_grpc
from tests.support.service_process import SERVICE_ARGS, combined_repository  # noqa: F401


@pytest.fixture(scope="module")
def stub(service):
    """A gRPC stub on the session's service (modules with their own service define their own ``stub``)."""
    with grpc.insecure_channel(service.grpc_address) as channel:
        yield medclm_pb2_grpc.MedCLMStub(channel)


@pytest.fixture(scope="module")
def http(service):
    """An httpx client on the session's service's HTTP port."""
    with httpx.Client(base_url=service.http_url, timeout=120) as client:
        yield client
