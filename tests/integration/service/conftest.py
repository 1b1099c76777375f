"""The service tests' fixtures (``service``, ``service_repository``, the MedCLM repository and sample) live in
tests/integration/conftest.py, shared with the load-harness tests; ``combined_repository`` is re-exported
here for the tests that build their own repository."""

from __future__ import annotations

from tests.support.service_process import SERVICE_ARGS, combined_repository  # noqa: F401
