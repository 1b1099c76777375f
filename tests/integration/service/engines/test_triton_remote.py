"""TritonSegmentationEngine against the real tritonserver (``service.triton_local``) serving the committed
model_repository: the same masks as in-process ONNX Runtime over gRPC and HTTP, and a clean UNAVAILABLE once
Triton is gone.

One Triton serves the whole module; the last test stops it, so it must stay last in this file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from training.data.phantoms import generate_case

from service.engines.onnx_local import OnnxSegmentationEngine
from service.engines.triton_remote import TritonSegmentationEngine
from service.errors import ErrorCode, ServiceError
from service.triton_local import LocalTriton, free_port

pytestmark = pytest.mark.timeout(300)

REPO_ROOT = Path(__file__).resolve().parents[4]
REPOSITORY = REPO_ROOT / "model_repository"
VARIANTS = ["fp32", "fp16", "int8"]
SEED = 2024
GONE_WITHIN_S = 60.0  # generous bound for "Triton stopped → not ready, UNAVAILABLE"; not a speed test


@pytest.fixture(scope="module")
def triton():
    """The real tritonserver from .venv-triton on 127.0.0.1 (free ports), ready before the first test."""
    assert (REPOSITORY / "organ_seg_ct" / "1" / "model.onnx").is_file(), \
        "the committed default models are missing: python -m training.segmenter build-defaults"
    server = LocalTriton(REPOSITORY).start()  # returns once /v2/health/ready answers 200
    yield server
    server.stop()


def _url(server: LocalTriton, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


def _ort_masks(requests: list[tuple[str, str, np.ndarray]]) -> list[np.ndarray]:
    async def main():
        engine = OnnxSegmentationEngine(REPOSITORY, VARIANTS)
        await engine.start()
        try:
            return [await engine.segment(name, image, modality) for name, modality, image in requests]
        finally:
            await engine.close()

    return asyncio.run(main())


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_masks_equal_in_process_onnxruntime(triton, protocol):
    requests = [(name, modality, generate_case(modality, SEED, i).image)
                for modality in ("ct", "cxr")
                for name in ([f"organ_seg_{modality}"] + [f"organ_seg_{modality}_{v}" for v in ("fp16", "int8")])
                for i in range(3)]

    async def main():
        engine = TritonSegmentationEngine(_url(triton, protocol), protocol, REPOSITORY, VARIANTS,
                                          max_queue_delay_ms=20.0)
        await engine.start()
        try:
            assert engine.ready(), engine.problems
            # all at once: requests for one model travel to Triton as one batch
            return await asyncio.gather(*(engine.segment(name, image, modality)
                                          for name, modality, image in requests))
        finally:
            await engine.close()

    got = asyncio.run(main())
    want = _ort_masks(requests)
    for (name, _, image), mask, expected in zip(requests, got, want):
        assert mask.shape == image.shape and mask.dtype == np.uint8
        assert np.array_equal(mask, expected), f"{name} via {protocol}"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_no_triton_at_the_address_means_not_ready_and_unavailable(protocol):
    async def main():
        engine = TritonSegmentationEngine(f"127.0.0.1:{free_port()}", protocol, REPOSITORY, ["fp32"])
        await engine.start()  # must not raise: the service stays up and reports not ready
        try:
            with pytest.raises(ServiceError) as down:
                await engine.segment("organ_seg_ct", np.zeros((64, 64), np.int16), "ct")
            with pytest.raises(ServiceError) as unknown:
                await engine.segment("organ_seg_ct_int4", np.zeros((64, 64), np.int16), "ct")
            return engine.ready(), down.value, unknown.value
        finally:
            await engine.close()

    ready, down, unknown = asyncio.run(main())
    assert not ready
    assert down.code == ErrorCode.UNAVAILABLE and down.retry_after
    assert unknown.code == ErrorCode.NOT_FOUND


def test_stopping_triton_turns_engines_not_ready_and_unavailable(triton):
    """Last in the module: it stops the shared Triton."""
    image = generate_case("ct", SEED, 0).image

    async def until_not_ready(engine):
        while engine.ready():
            await asyncio.sleep(0.05)

    async def main():
        engines = [TritonSegmentationEngine(_url(triton, p), p, REPOSITORY, ["fp32"], health_interval_s=0.5)
                   for p in ("grpc", "http")]
        for engine in engines:
            await engine.start()
        try:
            assert all(engine.ready() for engine in engines)
            served = [await engine.segment("organ_seg_ct", image, "ct") for engine in engines]
            await asyncio.to_thread(triton.stop)
            # the readiness probe notices on its own, without any request
            await asyncio.wait_for(asyncio.gather(*(until_not_ready(e) for e in engines)), GONE_WITHIN_S)
            errors = []
            for engine in engines:
                with pytest.raises(ServiceError) as caught:
                    await asyncio.wait_for(engine.segment("organ_seg_ct", image, "ct"), GONE_WITHIN_S)
                errors.append(caught.value)
            return served, errors
        finally:
            for engine in engines:
                await engine.close()

    served, errors = asyncio.run(main())
    assert all(mask.shape == image.shape for mask in served)
    assert [e.code for e in errors] == [ErrorCode.UNAVAILABLE, ErrorCode.UNAVAILABLE]
    assert all("Triton" in e.message for e in errors)
