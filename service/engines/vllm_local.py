"""The in-process VQA engine: vLLM's v1 ``AsyncLLM`` on a model of the repository's vLLM-backend layout.

The model folder is the one Triton's vLLM backend serves (``<repository>/<name>/1/model.json`` holding the
engine arguments, ``1/checkpoint/`` the Hugging Face checkpoint), read with the exporter's own reader so the
service runs the model exactly as it was evaluated. Prompts are rendered with the checkpoint's chat template
through ``training.medclm.prompts.render_prompt``, the function training and evaluation use.

``AsyncLLM`` keeps its engine core in a child process, which vLLM's CPU platform always starts with
``spawn``: the program's main module is re-imported there, so entry points need the
``if __name__ == "__main__":`` guard. This object is the front end (tokenising, image processing,
detokenising) and lives on the service's event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import AsyncIterator

from PIL import Image

from training.medclm.checkpoint import META_FILE
from training.medclm.engines import set_vllm_cpu_environment
from training.medclm.errors import MedCLMError
from training.medclm.export import read_engine_args
from training.medclm.prompts import render_prompt

from service.engines.base import GenerationChunk, GenerationParams
from service.errors import ErrorCode, ServiceError
from service.metrics import ServiceMetrics

log = logging.getLogger("medclm.engines.vllm")
RETRY_AFTER_S = 5.0


def read_fingerprint(checkpoint: Path) -> str:
    """First 16 hex digits of the exported weights' sha256 (``medclm.json`` export record); "" if unknown.

    The same prefix the model registry reports, so ListModels and the engine agree.
    """
    try:
        meta = json.loads((Path(checkpoint) / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return ""
    return str((meta.get("export") or {}).get("weights_sha256") or "")[:16]


def classify_vllm_error(exc: Exception, name: str) -> Exception:
    """The ServiceError for an expected vLLM failure, or ``exc`` itself (a bug: INTERNAL, logged upstream)."""
    from vllm.exceptions import GracefulHTTPError, VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    if isinstance(exc, EngineDeadError):
        return ServiceError(ErrorCode.UNAVAILABLE, f"model {name} went down", retry_after=RETRY_AFTER_S)
    if isinstance(exc, VLLMClientError):  # request validation, e.g. a prompt longer than max_model_len
        return ServiceError(ErrorCode.INVALID_ARGUMENT, f"model {name} cannot serve this request: {exc}")
    if isinstance(exc, GracefulHTTPError):  # vLLM's own admission limits
        return ServiceError(ErrorCode.OVERLOADED, f"model {name} is busy: {exc.message}", retry_after=1.0)
    if isinstance(exc, EngineGenerateError) and isinstance(exc.__cause__, ValueError):
        # input processing (image, prompt) rejected the request: vLLM wraps it as a generate error
        return ServiceError(ErrorCode.INVALID_ARGUMENT, f"model {name} cannot serve this request: {exc.__cause__}")
    return exc


def shut_down(engine) -> None:
    """Stop an AsyncLLM's engine core and output handler, once.

    ``AsyncLLM.__del__`` shuts down again; when that runs at interpreter exit (a kept traceback still holding
    the engine) it fails on vLLM's already-cleared module globals, so the second call is made a no-op.
    """
    engine.shutdown()
    engine.shutdown = lambda timeout=None: None


class LocalVllmEngine:
    """:class:`service.engines.base.VqaEngine` over an in-process vLLM ``AsyncLLM``."""

    def __init__(self, model_repository: Path, name: str, threads: int = 2, max_model_len: int | None = None,
                 metrics: ServiceMetrics | None = None):
        self.model_repository = Path(model_repository)
        self.name = name
        self.threads = threads
        self.max_model_len = max_model_len
        self.metrics = metrics
        self.engine = None  # vllm.v1.engine.async_llm.AsyncLLM once started
        self.tokenizer = None  # the checkpoint's tokenizer (chat template), once started
        self.fingerprint = ""
        self.engine_args: dict = {}
        self._closed = False
        self._recovering = asyncio.Lock()
        if metrics is not None:
            metrics.engine_running.labels(model=name).set_function(self.running_requests)

    def _engine_args(self) -> dict:
        folder = self.model_repository / self.name
        # Relative checkpoint paths in model.json are relative to where the server starts, which for a
        # repository folder is its parent (export writes them so); read_engine_args falls back to 1/checkpoint.
        try:
            args = read_engine_args(folder, root=self.model_repository.resolve().parent)
        except MedCLMError as exc:
            raise ServiceError(ErrorCode.NOT_FOUND, f"model {self.name!r} cannot be loaded: {exc}") from exc
        if self.max_model_len:
            args["max_model_len"] = min(int(args.get("max_model_len") or self.max_model_len), self.max_model_len)
        args.setdefault("disable_log_stats", True)  # the service keeps its own metrics
        return args

    def _build(self, args: dict):
        """Blocking part of start: load tokenizer, spawn the engine core, load weights."""
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        tokenizer = AutoTokenizer.from_pretrained(args["model"], local_files_only=True)
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        return engine, tokenizer

    async def start(self) -> None:
        """Load the model; returns when it can serve. The load runs in a worker thread so the event loop
        (health checks, other engines starting) keeps running meanwhile."""
        if self.engine is not None:
            return
        if self._closed:
            raise ServiceError(ErrorCode.UNAVAILABLE, f"model {self.name} was closed")
        args = self._engine_args()
        set_vllm_cpu_environment(self.threads)  # before vllm is first imported
        self.fingerprint = read_fingerprint(Path(args["model"]))
        self.engine_args = args
        log.info("loading %s from %s", self.name, args["model"])
        self.engine, self.tokenizer = await asyncio.to_thread(self._build, args)
        if self._closed:  # closed while loading
            engine, self.engine = self.engine, None
            await asyncio.to_thread(shut_down, engine)

    def ready(self) -> bool:
        """True while the engine is loaded and neither closed nor dead."""
        engine = self.engine
        return engine is not None and not self._closed and not engine.errored

    def running_requests(self) -> int:
        """Requests the engine has not finished (waiting or generating); 0 when not started or dead."""
        engine = self.engine
        if engine is None or engine.errored:
            return 0
        return engine.get_num_unfinished_requests()

    async def recover(self) -> None:
        """Bring a dead engine back: shut the dead ``AsyncLLM`` down (its engine-core process is gone) and
        start a new one; start one that never started (e.g. the model appeared in the repository later).
        No-op while ready or once closed; raises what the new start raises."""
        async with self._recovering:
            if self._closed or self.ready():
                return
            dead, self.engine = self.engine, None
            if dead is not None:
                log.warning("engine core of %s died; restarting it", self.name)
                try:
                    await asyncio.to_thread(shut_down, dead)
                except Exception as exc:  # noqa: BLE001 - what is left of a dead engine may fail to stop
                    log.warning("shutting down the dead engine of %s failed: %s", self.name, exc)
            await self.start()

    def _unavailable(self) -> ServiceError:
        state = "closed" if self._closed else "not started" if self.engine is None else "down"
        return ServiceError(ErrorCode.UNAVAILABLE, f"model {self.name} is {state}", retry_after=RETRY_AFTER_S)

    def _sampling_params(self, params: GenerationParams):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(max_tokens=params.max_tokens, temperature=params.temperature, seed=params.seed,
                              output_kind=RequestOutputKind.DELTA, skip_special_tokens=True)

    async def generate(self, messages: list[dict], image: Image.Image, params: GenerationParams,
                       request_id: str) -> AsyncIterator[GenerationChunk]:
        """Stream the generation as text deltas; the last chunk has ``finished`` and the finish reason.

        Closing the iterator early (client gone, deadline) aborts the request inside the engine.
        """
        if not self.ready():
            raise self._unavailable()
        engine = self.engine
        prompt = render_prompt(self.tokenizer, messages)
        sampling = self._sampling_params(params)
        inputs = {"prompt": prompt, "multi_modal_data": {"image": image}}
        stream = engine.generate(inputs, sampling, request_id)
        completion_tokens = 0
        finished = failed = False
        try:
            try:
                async for output in stream:
                    completion = output.outputs[0]
                    completion_tokens += len(completion.token_ids)
                    finished = output.finished
                    yield GenerationChunk(delta=completion.text, prompt_tokens=len(output.prompt_token_ids or ()),
                                          completion_tokens=completion_tokens, finished=finished,
                                          finish_reason=(completion.finish_reason or "stop") if finished else "")
            except Exception as exc:
                failed = True
                error = classify_vllm_error(exc, self.name)
                if error is exc:
                    raise
                raise error from exc
        finally:
            # vLLM's generator aborts its request when closed; aborting by id as well keeps the promise of
            # this method ("closing aborts") independent of that internal behaviour.
            await stream.aclose()
            if not finished and not engine.errored:
                await engine.abort(request_id)
                if self.metrics is not None and not failed:  # stopped from outside, not refused by vLLM
                    self.metrics.engine_aborts.labels(model=self.name).inc()

    async def abort(self, request_id: str) -> None:
        """Stop a running generation (its stream ends with finish reason "abort")."""
        engine = self.engine
        if engine is not None and not engine.errored:
            await engine.abort(request_id)

    async def close(self) -> None:
        """Shut the engine core down and release the KV cache; the engine is not ready afterwards."""
        self._closed = True
        engine, self.engine = self.engine, None
        if engine is not None:
            await asyncio.to_thread(shut_down, engine)
