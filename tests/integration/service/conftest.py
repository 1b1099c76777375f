"""Fixtures shared by the service's integration tests: a servable MedCLM repository, a question for it,
and one real service process (``python -m service`` on 127.0.0.1:0) for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.medclm_repository import (COMMITTED_REPOSITORY, medclm_dataset,  # noqa: F401
                                             medclm_reference, medclm_repository, medclm_sample)
from tests.support.service_process import start_service

# Small admission limits so a burst of requests reaches OVERLOADED in a test; one request at a time
# elsewhere never comes close.
SERVICE_ARGS = ["--vqa-max-running", "2", "--vqa-max-waiting", "2", "--vllm-threads", "2", "--max-tokens-cap", "512"]


def combined_repository(medclm_repository: Path, folder: Path, with_medclm: bool = True) -> Path:
    """A repository with the committed organ segmenters and (optionally) the test's ``medclm``, by symlinks."""
    folder.mkdir(parents=True, exist_ok=True)
    for model in sorted(COMMITTED_REPOSITORY.glob("organ_seg_*")):
        (folder / model.name).symlink_to(model)
    if with_medclm:
        (folder / "medclm").symlink_to(medclm_repository / "medclm")
    return folder


@pytest.fixture(scope="session")
def service_repository(medclm_repository, tmp_path_factory) -> Path:
    """Organ segmenters + medclm: the committed repository when it has both, else a combined one."""
    if medclm_repository == COMMITTED_REPOSITORY:
        return COMMITTED_REPOSITORY
    return combined_repository(medclm_repository, tmp_path_factory.mktemp("service") / "model_repository")


@pytest.fixture(scope="session")
def service(service_repository):
    """The real service, ready, shared by the session; stopped with SIGTERM at the end."""
    process = start_service(["--model-repository", str(service_repository), *SERVICE_ARGS])
    yield process
    process.stop()
