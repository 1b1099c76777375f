"""The in-process segmentation engine: ONNX Runtime sessions on the repository's ``organ_seg_*`` models.

Each served model (``organ_seg_<modality>[_<variant>]/1/model.onnx``, ct and cxr for every variant) is
loaded once, with its contract (preprocessing, label map) read from the ONNX metadata and its I/O checked,
exactly as ``training.segmenter.onnx_segmenter.OnnxOrganSegmenter`` does, with the same shared functions,
so the service's masks are the data engine's masks. Concurrent requests for one model are stacked into one
(B,1,H,W) ``session.run`` by a :class:`DynamicBatcher`; the session runs in a worker thread (ONNX Runtime
releases the GIL). A model whose file is missing or invalid leaves the engine not ready and answers
UNAVAILABLE naming the problem; the process keeps running.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from pathlib import Path

import numpy as np

from training.segmenter.errors import SegmenterError
from training.segmenter.export import INPUT_NAME, ort_session
from training.segmenter.onnx_segmenter import (PROBABILITIES, SegmenterContract, check_io_contract, read_contract,
                                               session_signature)

from service.engines.segmenter_common import PreparedImage, RepositorySegmentationEngine, split_batch
from service.metrics import ServiceMetrics

log = logging.getLogger("medclm.engines.onnxruntime")


def execution_providers() -> list[str]:
    """CUDA first when this ONNX Runtime build has it (onnxruntime-gpu), always CPU as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


class OnnxSegmentationEngine(RepositorySegmentationEngine):
    """:class:`service.engines.base.SegmentationEngine` over in-process ONNX Runtime sessions."""

    engine = "onnxruntime"

    def __init__(self, model_repository: Path, variants: list[str] | tuple[str, ...] = ("fp32",), *,
                 threads: int = 1, batching: bool = True, max_batch_size: int = 8, max_queue_delay_ms: float = 2.0,
                 metrics: ServiceMetrics | None = None):
        super().__init__(model_repository, variants, batching=batching, max_batch_size=max_batch_size,
                         max_queue_delay_ms=max_queue_delay_ms, metrics=metrics)
        self.threads = threads
        self.providers: list[str] = []
        self.sessions: dict[str, object] = {}

    def _load(self, name: str, modality: str) -> tuple[object, SegmenterContract]:
        path = self.model_repository / name / "1" / "model.onnx"
        contract = read_contract(path, modality)
        session = ort_session(path, self.threads, providers=self.providers)
        check_io_contract(*session_signature(session), contract, str(path))
        return session, contract

    async def start(self) -> None:
        """Load every served model; one that cannot be loaded is recorded as a problem (engine not ready)."""
        self.providers = execution_providers()
        for name in self.models:
            await self._load_into_service(name)
        self._started = True

    async def _load_into_service(self, name: str) -> bool:
        try:
            session, contract = await asyncio.to_thread(self._load, name, self.models[name])
        except SegmenterError as exc:
            self._record_problem(name, str(exc))
            return False
        self.problems.pop(name, None)
        self.sessions[name], self.contracts[name] = session, contract
        self._add_batcher(name, partial(self._infer, session))
        return True

    async def recover(self) -> None:
        """Load again every model that could not be loaded (its file was missing or invalid): the engine is
        ready once all of them load. No-op once closed."""
        if self._closed or not self._started:
            return
        for name in list(self.problems):
            if await self._load_into_service(name):
                log.info("onnxruntime engine: model %s loaded", name)

    def ready(self) -> bool:
        """True once every served model is loaded, until :meth:`close`."""
        return self.models_ready()

    @staticmethod
    def _infer(session, items: list[PreparedImage]) -> list[np.ndarray]:
        """One batched run (called in a worker thread): stack, run, split into per-image probabilities."""
        probabilities = session.run([PROBABILITIES], {INPUT_NAME: RepositorySegmentationEngine.stack(items)})[0]
        return split_batch(probabilities, len(items))

    async def close(self) -> None:
        """Stop the batchers and drop the sessions."""
        await super().close()
        self.sessions.clear()
