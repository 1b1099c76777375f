"""What the registry reads from a VQA model's provenance (``medclm.json``)."""

from __future__ import annotations

import json

import pytest

from service.core.registry import vqa_model
from service.errors import ErrorCode, ServiceError


def write_provenance(repository, config: dict) -> None:
    folder = repository / "medclm" / "1" / "checkpoint"
    folder.mkdir(parents=True)
    meta = {"config": config, "modalities": ["ct"], "export": {"weights_sha256": "ab" * 32}}
    (folder / "medclm.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("config, grid", [({"box_tokens": "pixels", "image_size": 192}, 192),
                                          ({"box_tokens": "digits", "image_size": 192}, None),
                                          ({"image_size": 128}, None)])  # written before box_tokens existed
def test_a_pixel_token_model_carries_its_box_grid(tmp_path, config, grid):
    write_provenance(tmp_path, config)
    model = vqa_model(tmp_path, "medclm", "fp32")
    assert (model.box_grid, model.modalities, model.fingerprint) == (grid, ("ct",), "ab" * 8)


def test_a_model_without_provenance_is_not_found(tmp_path):
    with pytest.raises(ServiceError) as caught:
        vqa_model(tmp_path, "medclm", "fp32")
    assert caught.value.code == ErrorCode.NOT_FOUND
