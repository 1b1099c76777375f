"""The tiny phantom dataset and micro config of the unit tests, plus one micro checkpoint per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.training.medclm.conftest import micro_config, tiny_data  # noqa: F401  (fixture re-export)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_data, tmp_path_factory) -> Path:  # noqa: F811
    """A briefly trained micro checkpoint (~15 s on one core): the last phase's folder."""
    from training.medclm.trainer import train

    config = micro_config(easy_epochs=2.0, medium_epochs=0.5, hard_epochs=0.25, eval_records=0, replay=0.0)
    result = train(config, tiny_data, tmp_path_factory.mktemp("medclm_run"), progress=False)
    return result.checkpoints[-1]
