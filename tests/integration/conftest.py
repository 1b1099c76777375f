"""Fixtures shared by every integration test folder: a servable MedCLM repository, a question for it, and
one real service process (``python -m service`` on 127.0.0.1:0) for the whole session, so the service tests
and the load-harness tests talk to the same process instead of each starting a vLLM engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.medclm_repository import (medclm_dataset, medclm_reference,  # noqa: F401
                                             medclm_repository, medclm_sample, memorised, memorising_repository)
from tests.support.service_process import SERVICE_ARGS, combined_repository, start_service


@pytest.fixture(scope="session")
def service_repository(memorising_repository, tmp_path_factory) -> Path:  # noqa: F811
    """The committed organ segmenters + a ``medclm`` whose answers to known questions are known (see
    tests/support/medclm_repository.py), so the box and grounding paths are checked against the truth."""
    return combined_repository(memorising_repository, tmp_path_factory.mktemp("service") / "model_repository")


@pytest.fixture(scope="session")
def service(service_repository):
    """The real service, ready, shared by the session; stopped with SIGTERM at the end."""
    process = start_service(["--model-repository", str(service_repository), *SERVICE_ARGS])
    yield process
    process.stop()
