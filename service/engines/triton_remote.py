"""The remote segmentation engine: the repository's ``organ_seg_*`` models served by a Triton server.

Preprocessing and the label map come from the files beside each model in the local copy of the repository
(``preprocessing.json``, ``labels.txt``: the folder Triton serves), through the same shared functions as the
in-process engine, so both engines return the same masks. Only the network runs in Triton, reached with
``tritonclient.grpc.aio`` or ``tritonclient.http.aio``: input ``image`` [B,1,H,W] FP32, output
``probabilities``. Concurrent requests are batched by the same :class:`DynamicBatcher` (Triton batches too,
but one request carrying a batch saves round trips).

Readiness is watched, not guessed: a background probe asks Triton for server and model readiness every
``health_interval_s`` with a short timeout, and a failed inference call marks Triton down at once. While
Triton is down, ``ready()`` is False and ``segment`` answers UNAVAILABLE without waiting on the network.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from pathlib import Path

import numpy as np

from training.segmenter.errors import SegmenterError
from training.segmenter.export import INPUT_NAME
from training.segmenter.onnx_segmenter import (PROBABILITIES, check_io_contract,
                                               read_folder_contract)

from service.engines.segmenter_common import PreparedImage, RepositorySegmentationEngine, split_batch
from service.errors import ErrorCode, ServiceError
from service.metrics import ServiceMetrics

log = logging.getLogger("medclm.engines.triton")

RETRY_AFTER_S = 5.0
_UNREACHABLE_GRPC_STATUSES = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"}


def _signature(metadata: dict) -> tuple[dict[str, tuple[str, list]], dict[str, tuple[str, list]]]:
    """Triton model metadata (JSON form) → ``check_io_contract``'s ``{name: (numpy dtype, shape)}``."""
    from tritonclient.utils import triton_to_np_dtype

    def describe(tensors) -> dict[str, tuple[str, list]]:
        return {t["name"]: (np.dtype(triton_to_np_dtype(t["datatype"])).name, [int(d) for d in t["shape"]])
                for t in tensors}

    return describe(metadata.get("inputs", [])), describe(metadata.get("outputs", []))


class _GrpcTriton:
    """The few Triton calls the engine makes, over ``tritonclient.grpc.aio``; :class:`_HttpTriton` has the
    same methods over HTTP."""

    def __init__(self, url: str):
        import tritonclient.grpc.aio as client_module
        from tritonclient.grpc import KeepAliveOptions

        keepalive = KeepAliveOptions()
        self.module = client_module
        # tritonclient's own defaults, plus a short reconnect backoff: after Triton restarts, gRPC's default
        # backoff (up to two minutes) would keep the channel failing long after the server is back.
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
                   ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
                   ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
                   ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
                   ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
                   ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", 2000)]
        self.client = client_module.InferenceServerClient(url, channel_args=options)

    async def server_ready(self) -> bool:
        return await self.client.is_server_ready()

    async def model_ready(self, name: str) -> bool:
        return await self.client.is_model_ready(name)

    async def model_metadata(self, name: str) -> dict:
        return await self.client.get_model_metadata(name, as_json=True)

    async def infer(self, name: str, batch: np.ndarray) -> np.ndarray:
        image = self.module.InferInput(INPUT_NAME, list(batch.shape), "FP32")
        image.set_data_from_numpy(batch)
        result = await self.client.infer(name, [image], outputs=[self.module.InferRequestedOutput(PROBABILITIES)])
        return result.as_numpy(PROBABILITIES)

    async def close(self) -> None:
        await self.client.close()


class _HttpTriton(_GrpcTriton):
    """The same calls over ``tritonclient.http.aio`` (binary tensors)."""

    def __init__(self, url: str, request_timeout_s: float):
        import tritonclient.http.aio as client_module

        self.module = client_module
        self.client = client_module.InferenceServerClient(url, conn_timeout=request_timeout_s)

    async def model_metadata(self, name: str) -> dict:
        return await self.client.get_model_metadata(name)

    async def infer(self, name: str, batch: np.ndarray) -> np.ndarray:
        image = self.module.InferInput(INPUT_NAME, list(batch.shape), "FP32")
        image.set_data_from_numpy(batch, binary_data=True)
        output = self.module.InferRequestedOutput(PROBABILITIES, binary_data=True)
        result = await self.client.infer(name, [image], outputs=[output])
        return result.as_numpy(PROBABILITIES)


def is_unreachable(exc: BaseException) -> bool:
    """Whether a client error means Triton cannot be reached (down, restarting, too slow) rather than a
    refusal of this request."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, (TimeoutError, OSError)):  # connection refused / reset, timeouts
        return True
    if isinstance(exc, InferenceServerException):
        return str(exc.status()) in _UNREACHABLE_GRPC_STATUSES
    try:
        import aiohttp
    except ImportError:
        return False
    return isinstance(exc, aiohttp.ClientError)


class TritonSegmentationEngine(RepositorySegmentationEngine):
    """:class:`service.engines.base.SegmentationEngine` over a Triton server (see the module docstring).

    ``url`` is ``host:port`` (a scheme is tolerated and dropped). ``health_timeout_s`` bounds each readiness
    probe, ``request_timeout_s`` each inference call; neither can hang a caller for longer.
    """

    engine = "triton"

    def __init__(self, url: str, protocol: str, model_repository: Path,
                 variants: list[str] | tuple[str, ...] = ("fp32",), *, batching: bool = True,
                 max_batch_size: int = 8, max_queue_delay_ms: float = 2.0, metrics: ServiceMetrics | None = None,
                 request_timeout_s: float = 30.0, health_timeout_s: float = 1.0, health_interval_s: float = 1.0):
        super().__init__(model_repository, variants, batching=batching, max_batch_size=max_batch_size,
                         max_queue_delay_ms=max_queue_delay_ms, metrics=metrics)
        if protocol not in ("grpc", "http"):
            raise ValueError(f"triton protocol must be grpc or http, not {protocol!r}")
        self.url = url.split("://", 1)[-1].rstrip("/")
        self.protocol = protocol
        self.request_timeout_s = request_timeout_s
        self.health_timeout_s = health_timeout_s
        self.health_interval_s = health_interval_s
        self._client: _GrpcTriton | None = None
        self._up = False
        self._down_reason = "not connected yet"
        self._checked_signatures: set[str] = set()
        self._watcher: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None

    # --- lifecycle ---
    async def start(self) -> None:
        """Read each model's contract from the local repository, connect, probe once, then keep watching.

        Triton being down is not an error here: the engine stays not ready until the probe sees it up.
        """
        for name, modality in self.models.items():
            try:
                contract = read_folder_contract(self.model_repository / name, modality)
            except SegmenterError as exc:
                self._record_problem(name, str(exc))
                continue
            self.contracts[name] = contract
            self._add_batcher(name, partial(self._infer, name))
        self._client = (_GrpcTriton(self.url) if self.protocol == "grpc"
                        else _HttpTriton(self.url, self.request_timeout_s))
        self._wake = asyncio.Event()
        await self._probe()
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="triton-readiness")
        self._started = True

    def ready(self) -> bool:
        """True while Triton answers ready for every served model and each model's contract holds."""
        return self.models_ready() and self._up

    async def recover(self) -> None:
        """Read again the local contract files that were missing or invalid at start; Triton itself being
        down needs nothing here (the readiness probe notices when it is back). No-op once closed."""
        if self._closed or not self._started:
            return
        for name in [n for n in self.problems if n not in self.contracts]:
            try:
                contract = read_folder_contract(self.model_repository / name, self.models[name])
            except SegmenterError as exc:
                self._record_problem(name, str(exc))
                continue
            self.problems.pop(name, None)
            self.contracts[name] = contract
            self._add_batcher(name, partial(self._infer, name))
            log.info("triton engine: contract of %s read", name)
        if self._wake is not None:
            self._wake.set()  # probe now: the new models must be ready on the server too

    async def close(self) -> None:
        """Stop watching, stop the batchers, close the client connection."""
        await super().close()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            try:
                await watcher
            except asyncio.CancelledError:
                pass
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    # --- readiness ---
    async def _watch(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.health_interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self._probe()

    async def _probe(self) -> None:
        """Ask Triton whether the server and each model are ready; check a model's I/O once it is."""
        try:
            if not await asyncio.wait_for(self._client.server_ready(), self.health_timeout_s):
                return self._set_up(False, "the server reports not ready")
            names = [n for n in self.contracts if n not in self.problems]
            states = await asyncio.wait_for(asyncio.gather(*(self._client.model_ready(n) for n in names)),
                                            self.health_timeout_s)
            missing = [n for n, ok in zip(names, states) if not ok]
            if missing:
                return self._set_up(False, f"models not ready on the server: {', '.join(missing)}")
            for name in names:
                if name not in self._checked_signatures:
                    await self._check_signature(name)
        except Exception as exc:  # unreachable, timed out, or an error answer: all mean "cannot serve now"
            return self._set_up(False, f"{type(exc).__name__}: {exc}".rstrip(": "))
        self._set_up(True, "")

    async def _check_signature(self, name: str) -> None:
        metadata = await asyncio.wait_for(self._client.model_metadata(name), self.health_timeout_s)
        try:
            check_io_contract(*_signature(metadata), self.contracts[name], f"Triton model {name}")
        except SegmenterError as exc:
            self._record_problem(name, str(exc))
        self._checked_signatures.add(name)

    def _set_up(self, up: bool, reason: str) -> None:
        if up != self._up:
            if up:
                log.info("Triton at %s (%s) is ready", self.url, self.protocol)
            else:
                log.warning("Triton at %s (%s) cannot serve: %s", self.url, self.protocol, reason)
        self._up, self._down_reason = up, reason

    def _check_serving(self, name: str) -> None:
        if not self._up:
            raise ServiceError(ErrorCode.UNAVAILABLE, f"Triton at {self.url} cannot serve {name}: "
                                                      f"{self._down_reason}", retry_after=RETRY_AFTER_S)

    # --- inference ---
    async def _infer(self, name: str, items: list[PreparedImage]) -> list[np.ndarray]:
        """One batched Triton request, split into per-image probabilities."""
        if self._client is None or not self._up:
            raise ServiceError(ErrorCode.UNAVAILABLE, f"Triton at {self.url} cannot serve {name}: "
                                                      f"{self._down_reason}", retry_after=RETRY_AFTER_S)
        try:
            probabilities = await asyncio.wait_for(self._client.infer(name, self.stack(items)),
                                                   self.request_timeout_s)
        except Exception as exc:
            raise self._classify(exc, name) from exc
        return split_batch(probabilities, len(items))

    def _classify(self, exc: Exception, name: str) -> Exception:
        """UNAVAILABLE for Triton being unreachable (and re-probe now) or refusing to run the model; any
        other exception is a bug and stays itself (INTERNAL upstream)."""
        from tritonclient.utils import InferenceServerException

        if is_unreachable(exc):
            self._set_up(False, f"{type(exc).__name__}: {exc}".rstrip(": "))
            if self._wake is not None:
                self._wake.set()
            return ServiceError(ErrorCode.UNAVAILABLE, f"Triton at {self.url} is unreachable "
                                                      f"({type(exc).__name__})", retry_after=RETRY_AFTER_S)
        if isinstance(exc, InferenceServerException):
            return ServiceError(ErrorCode.UNAVAILABLE, f"Triton could not run {name}: {exc.message()}",
                                retry_after=RETRY_AFTER_S)
        return exc
