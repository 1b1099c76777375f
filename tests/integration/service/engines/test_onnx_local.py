"""OnnxSegmentationEngine on the committed model_repository: the data engine's masks, batched or not, and a
real segmentation (Dice against the phantoms' true organ masks); missing files and bad requests."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from training.data.anatomy import organs_for
from training.data.phantoms import generate_case
from training.segmenter.metrics import dice
from training.segmenter.onnx_segmenter import OnnxOrganSegmenter

from service.engines.onnx_local import OnnxSegmentationEngine
from service.errors import ErrorCode, ServiceError
from service.metrics import ServiceMetrics

pytestmark = pytest.mark.timeout(300)

REPO_ROOT = Path(__file__).resolve().parents[4]
REPOSITORY = REPO_ROOT / "model_repository"
VARIANTS = ["fp32", "fp16", "int8"]
MODELS = [("organ_seg_ct", "ct", "fp32"), ("organ_seg_ct_fp16", "ct", "fp16"), ("organ_seg_ct_int8", "ct", "int8"),
          ("organ_seg_cxr", "cxr", "fp32"), ("organ_seg_cxr_fp16", "cxr", "fp16"),
          ("organ_seg_cxr_int8", "cxr", "int8")]
SEED = 12345  # the default models train on seed 0: these phantoms are unseen


@pytest.fixture(scope="module", autouse=True)
def committed_models():
    assert (REPOSITORY / "organ_seg_ct" / "1" / "model.onnx").is_file(), \
        "the committed default models are missing: python -m training.segmenter build-defaults"


def _run_with_engine(scenario, **options):
    """Start an engine over the committed repository, run ``scenario(engine)``, close it."""
    async def main():
        engine = OnnxSegmentationEngine(REPOSITORY, options.pop("variants", VARIANTS), **options)
        await engine.start()
        try:
            return await scenario(engine)
        finally:
            await engine.close()

    return asyncio.run(main())


@pytest.mark.parametrize("name,modality,variant", MODELS)
def test_masks_equal_the_data_engines_segmenter(name, modality, variant):
    cases = [generate_case(modality, SEED, i) for i in range(4)]

    async def scenario(engine):
        assert engine.ready()
        return [await engine.segment(name, case.image, modality) for case in cases]

    masks = _run_with_engine(scenario)
    reference = OnnxOrganSegmenter(REPOSITORY, variant)
    for case, mask in zip(cases, masks):
        assert mask.shape == case.image.shape and mask.dtype == np.uint8
        assert np.array_equal(mask, reference.segment(case.image, modality, case.pixel_spacing_mm))


@pytest.mark.parametrize("name,modality", [("organ_seg_ct", "ct"), ("organ_seg_cxr_int8", "cxr")])
def test_eight_concurrent_requests_batch_and_equal_unbatched(name, modality):
    cases = [generate_case(modality, SEED, i) for i in range(8)]
    metrics = ServiceMetrics()

    async def concurrently(engine):
        return await asyncio.gather(*(engine.segment(name, c.image, modality) for c in cases))

    batched = _run_with_engine(concurrently, batching=True, max_batch_size=8, max_queue_delay_ms=50.0,
                               metrics=metrics)
    alone = _run_with_engine(concurrently, batching=False)
    batches = metrics.registry.get_sample_value("medclm_segmentation_batch_size_count", {"model": name})
    assert metrics.registry.get_sample_value("medclm_segmentation_batch_size_sum", {"model": name}) == 8
    assert batches < 8, "concurrent requests were never batched"
    for a, b in zip(batched, alone):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name,modality", [("organ_seg_ct", "ct"), ("organ_seg_cxr", "cxr")])
def test_masks_match_the_true_organs(name, modality):
    cases = [generate_case(modality, SEED, i) for i in range(6)]

    async def scenario(engine):
        return await asyncio.gather(*(engine.segment(name, c.image, modality) for c in cases))

    masks = _run_with_engine(scenario, variants=["fp32"])
    scores = []
    for case, mask in zip(cases, masks):
        for organ in organs_for(modality):
            score = dice(mask == organ.label, case.organ_mask == organ.label)
            if not np.isnan(score):
                scores.append(score)
    assert np.mean(scores) > 0.85


def test_batch_size_is_capped_by_the_model_config():
    async def scenario(engine):
        return {name: batcher.max_batch_size for name, batcher in engine.batchers.items()}

    sizes = _run_with_engine(scenario, variants=["fp32"], max_batch_size=32)
    assert sizes == {"organ_seg_ct": 8, "organ_seg_cxr": 8}  # config.pbtxt: max_batch_size 8


def test_request_errors_are_classified():
    ct = generate_case("ct", SEED, 0).image

    async def scenario(engine):
        errors = {}
        for label, call in (("unknown", engine.segment("organ_seg_mri", ct, "mri")),
                            ("modality", engine.segment("organ_seg_cxr", ct, "ct")),
                            ("shape", engine.segment("organ_seg_ct", np.zeros((2, 3, 64, 64), np.int16), "ct"))):
            with pytest.raises(ServiceError) as caught:
                await call
            errors[label] = caught.value
        return errors

    errors = _run_with_engine(scenario, variants=["fp32"])
    assert errors["unknown"].code == ErrorCode.NOT_FOUND and "organ_seg_mri" in errors["unknown"].message
    assert errors["modality"].code == ErrorCode.INVALID_ARGUMENT and errors["modality"].field == "modality"
    assert errors["shape"].code == ErrorCode.INVALID_ARGUMENT and errors["shape"].field == "image"


def test_a_missing_model_file_leaves_the_engine_up_but_not_ready(tmp_path):
    shutil.copytree(REPOSITORY / "organ_seg_ct", tmp_path / "organ_seg_ct")  # no organ_seg_cxr
    case = generate_case("ct", SEED, 0)

    async def main():
        engine = OnnxSegmentationEngine(tmp_path, ["fp32"])
        await engine.start()  # must not raise: the service stays up and reports the problem
        try:
            with pytest.raises(ServiceError) as caught:
                await engine.segment("organ_seg_cxr", np.zeros((64, 64), np.uint8), "cxr")
            served = await engine.segment("organ_seg_ct", case.image, "ct")
            return engine.ready(), caught.value, served
        finally:
            await engine.close()

    ready, error, served = asyncio.run(main())
    assert not ready
    assert error.code == ErrorCode.UNAVAILABLE
    assert "organ_seg_cxr/1/model.onnx does not exist" in error.message
    assert served.shape == case.image.shape  # the models that did load still answer


def test_closed_engine_answers_unavailable():
    async def main():
        engine = OnnxSegmentationEngine(REPOSITORY, ["fp32"])
        await engine.start()
        await engine.close()
        with pytest.raises(ServiceError) as caught:
            await engine.segment("organ_seg_ct", np.zeros((64, 64), np.int16), "ct")
        return engine.ready(), caught.value

    ready, error = asyncio.run(main())
    assert not ready and error.code == ErrorCode.UNAVAILABLE
