"""What both segmentation engines share: which repository models they serve, the checks on a request, the
per-image pre- and postprocessing around a batched network call, and one :class:`DynamicBatcher` per model.

The engines differ only in where the network runs (an in-process ONNX Runtime session, or a Triton server)
and in how readiness is known; they supply ``infer`` and ``start`` and inherit the rest.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np

from training.data.anatomy import MODALITIES
from training.segmenter.errors import SegmenterError
from training.segmenter.onnx_segmenter import SegmenterContract, global_labels, prepare_input
from training.segmenter.preprocessing import Letterbox
from training.segmenter.repository import model_name, parse_config

from service.engines.batching import DynamicBatcher
from service.errors import ErrorCode, ServiceError, invalid
from service.metrics import ServiceMetrics

log = logging.getLogger("medclm.engines.segmentation")

PreparedImage = tuple[np.ndarray, Letterbox]  # ([1,H,W] network input, where the image sits in it)


def served_model_names(variants: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Repository model name → modality, for every modality and each precision variant."""
    return {model_name(modality, variant): modality for variant in variants for modality in MODALITIES}


def repository_max_batch_size(folder: Path, requested: int) -> int:
    """``requested``, capped at the model's ``max_batch_size`` in config.pbtxt when it declares one: a
    Triton server rejects larger batches, and the in-process engine keeps to the same contract."""
    config_path = Path(folder) / "config.pbtxt"
    if not config_path.is_file():
        return requested
    declared = parse_config(config_path).max_batch_size
    return min(requested, declared) if declared > 0 else requested


def split_batch(probabilities: np.ndarray, expected: int) -> list[np.ndarray]:
    """A batch's ``probabilities`` [B,K,h,w] as one [K,h,w] array per image (views, no copy)."""
    if probabilities.ndim != 4 or probabilities.shape[0] != expected:
        raise RuntimeError(f"the segmenter returned probabilities of shape {probabilities.shape} for a batch of "
                           f"{expected}")
    return list(probabilities)


class RepositorySegmentationEngine:
    """Base of the segmentation engines (:class:`service.engines.base.SegmentationEngine`).

    Subclasses implement :meth:`start` (filling :attr:`contracts` or :attr:`problems` per model, then
    :meth:`_add_batcher`) and an ``infer`` callable per model: ``list[PreparedImage] -> list[probabilities]``,
    plain (run in a thread) or a coroutine function. The network call is all a batch does: each request then
    restores its own label map at its original size in a worker thread, so the next batch runs on one core
    while the last batch's masks are restored on the other.
    """

    engine = ""

    def __init__(self, model_repository: Path, variants: list[str] | tuple[str, ...] = ("fp32",), *,
                 batching: bool = True, max_batch_size: int = 8, max_queue_delay_ms: float = 2.0,
                 metrics: ServiceMetrics | None = None):
        self.model_repository = Path(model_repository)
        self.models = served_model_names(variants)  # validates the variant names
        self.batching = batching
        self.max_batch_size = max_batch_size
        self.max_queue_delay_ms = max_queue_delay_ms
        self.metrics = metrics
        self.contracts: dict[str, SegmenterContract] = {}
        self.problems: dict[str, str] = {}  # model → why it cannot be served (missing or invalid files)
        self.batchers: dict[str, DynamicBatcher] = {}
        self._started = False
        self._closed = False

    def _record_problem(self, name: str, message: str) -> None:
        if self.problems.get(name) != message:  # retried by the supervisor: log each problem once
            log.error("%s engine: model %s cannot be served: %s", self.engine, name, message)
        self.problems[name] = message

    def _add_batcher(self, name: str, infer) -> None:
        size = repository_max_batch_size(self.model_repository / name, self.max_batch_size)
        self.batchers[name] = DynamicBatcher(infer, name=name, batching=self.batching, max_batch_size=size,
                                             max_queue_delay_ms=self.max_queue_delay_ms, metrics=self.metrics)

    def models_ready(self) -> bool:
        """Started, not closed, and every served model loaded."""
        return self._started and not self._closed and not self.problems

    def _check_serving(self, name: str) -> None:
        """Hook: raise UNAVAILABLE when the backend cannot serve ``name`` right now."""

    def _contract_for(self, name: str, modality: str) -> SegmenterContract:
        if name not in self.models:
            raise ServiceError(ErrorCode.NOT_FOUND, f"model {name!r} is not served by the {self.engine} engine "
                               f"(served: {', '.join(sorted(self.models))})", "model")
        if self._closed:
            raise ServiceError(ErrorCode.UNAVAILABLE, "the organ segmenter is shutting down", retry_after=1.0)
        if name in self.problems:
            raise ServiceError(ErrorCode.UNAVAILABLE, f"model {name} cannot be served: {self.problems[name]}")
        if name not in self.contracts or name not in self.batchers:
            raise ServiceError(ErrorCode.UNAVAILABLE, f"model {name} is not loaded yet", retry_after=5.0)
        if modality != self.models[name]:
            raise invalid(f"model {name} segments {self.models[name].upper()} images, not {modality.upper()}",
                          "modality")
        return self.contracts[name]

    async def segment(self, model: str, pixels: np.ndarray, modality: str,
                      deadline: float | None = None) -> np.ndarray:
        """(H, W) uint8 global organ labels of ``pixels`` from ``model`` (see the protocol)."""
        contract = self._contract_for(model, modality)
        self._check_serving(model)
        try:
            prepared = await asyncio.to_thread(prepare_input, pixels, contract)
        except SegmenterError as exc:
            raise invalid(f"the image cannot be segmented: {exc}", "image") from exc
        probabilities = await self.batchers[model].submit(prepared, deadline)
        return await asyncio.to_thread(global_labels, probabilities, prepared[1], contract)

    async def close(self) -> None:
        """Stop the batchers (waiting callers get UNAVAILABLE)."""
        self._closed = True
        await asyncio.gather(*(b.close() for b in self.batchers.values()))

    @staticmethod
    def stack(items: list[PreparedImage]) -> np.ndarray:
        """The batch's network input [B,1,H,W] float32."""
        return np.stack([network_input for network_input, _ in items]).astype(np.float32, copy=False)
