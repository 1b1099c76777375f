"""The remote VQA engine: a vLLM OpenAI-compatible server, streamed through ``/v1/chat/completions``.

The server applies the checkpoint's own chat template to the messages, so the prompt it builds is the one
``training.medclm.prompts.render_prompt`` builds in-process (the template renders ``image_url`` parts like
``image`` parts). The image travels as a PNG data URL (lossless: the server sees the pixels we would).

Failures map onto the service's codes in one place (:func:`error_for_status`): unreachable server or 5xx →
UNAVAILABLE, 429 → OVERLOADED, other 4xx → INVALID_ARGUMENT. Closing the iterator closes the HTTP stream; the
vLLM server aborts a request whose client disconnected.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
from typing import AsyncIterator

import httpx
from PIL import Image

from service.engines.base import GenerationChunk, GenerationParams
from service.errors import ErrorCode, ServiceError

log = logging.getLogger("medclm.engines.vllm_remote")
RETRY_AFTER_S = 5.0


def image_data_url(image: Image.Image) -> str:
    """The image as a ``data:image/png;base64,...`` URL (PNG: no compression artefacts)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def openai_messages(messages: list[dict], image: Image.Image) -> list[dict]:
    """Our chat messages (``build_messages``: ``{"type": "image"}`` + text parts) in OpenAI's form, with every
    image part carrying ``image`` as a data URL."""
    url = None
    converted = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image":
                    url = url or image_data_url(image)  # encode once, however many parts refer to it
                    parts.append({"type": "image_url", "image_url": {"url": url}})
                else:
                    parts.append(part)
            content = parts
        converted.append({**message, "content": content})
    return converted


def error_for_status(status: int, detail: str, name: str) -> ServiceError:
    """The ServiceError for an HTTP status of the remote server."""
    if status == 429:
        return ServiceError(ErrorCode.OVERLOADED, f"the vLLM server of {name} is busy: {detail}", retry_after=1.0)
    if 400 <= status < 500:
        return ServiceError(ErrorCode.INVALID_ARGUMENT, f"the vLLM server refused the request: {detail}")
    return ServiceError(ErrorCode.UNAVAILABLE, f"the vLLM server of {name} failed ({status}): {detail}",
                        retry_after=RETRY_AFTER_S)


def _error_detail(body: bytes | str) -> str:
    """The message of an OpenAI-style error body, else the body's start."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text[:200]


class RemoteVllmEngine:
    """:class:`service.engines.base.VqaEngine` over a remote vLLM OpenAI-compatible server.

    ``ready()`` reports the server's last ``GET /health`` (and that it serves ``name``), refreshed every
    ``health_interval_s`` in the background and after every connection failure.
    """

    def __init__(self, base_url: str, name: str, api_key: str | None = None, health_interval_s: float = 2.0,
                 connect_timeout_s: float = 5.0):
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.api_key = api_key
        self.health_interval_s = health_interval_s
        self.connect_timeout_s = connect_timeout_s
        self.fingerprint = ""  # the remote server does not tell; the registry reports the repository's
        self.client: httpx.AsyncClient | None = None
        self._healthy = False
        self._model_served = False
        self._closed = False
        self._poller: asyncio.Task | None = None
        self._responses: dict[str, httpx.Response] = {}  # request id → open stream, for abort()
        self._aborted: set[str] = set()  # request ids whose stream abort() closed

    async def start(self) -> None:
        """Open the connection pool, check the server once and keep checking it in the background.

        A server that is down at start is not an error: the engine stays not-ready until it comes up.
        """
        if self.client is not None:
            return
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        # No read timeout: a generation streams for as long as it needs; the pipeline enforces deadlines.
        timeout = httpx.Timeout(connect=self.connect_timeout_s, read=None, write=30.0, pool=None)
        self.client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout,
                                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=32))
        await self.check_health()
        if not self.ready():
            log.warning("vLLM server %s (model %s) is not ready yet", self.base_url, self.name)
        self._poller = asyncio.create_task(self._poll_health(), name=f"health:{self.name}")

    async def check_health(self) -> bool:
        """Ask the server now: ``GET /health`` answers 200 and ``GET /v1/models`` lists ``name``."""
        client = self.client
        if client is None or self._closed:
            return False
        try:
            response = await client.get("/health", timeout=self.connect_timeout_s)
            healthy = response.status_code == 200
            if healthy and not self._model_served:
                models = await client.get("/v1/models", timeout=self.connect_timeout_s)
                served = [m.get("id") for m in models.json().get("data", [])] if models.status_code == 200 else []
                self._model_served = self.name in served
                if not self._model_served:
                    log.error("vLLM server %s serves %s, not %s", self.base_url, served, self.name)
        except (httpx.HTTPError, ValueError):
            healthy = False
        self._healthy = healthy
        return self.ready()

    async def _poll_health(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.health_interval_s)
            await self.check_health()

    def ready(self) -> bool:
        """True while the server answered its last health check and serves ``name``."""
        return self.client is not None and not self._closed and self._healthy and self._model_served

    def _unavailable(self, detail: str) -> ServiceError:
        return ServiceError(ErrorCode.UNAVAILABLE, f"the vLLM server of {self.name} is {detail}",
                            retry_after=RETRY_AFTER_S)

    def _body(self, messages: list[dict], image: Image.Image, params: GenerationParams) -> dict:
        body = {"model": self.name, "messages": openai_messages(messages, image), "stream": True,
                "max_tokens": params.max_tokens, "temperature": params.temperature,
                "skip_special_tokens": True,  # vLLM's extension; its default, spelled out as the local engine does
                "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    async def generate(self, messages: list[dict], image: Image.Image, params: GenerationParams,
                       request_id: str) -> AsyncIterator[GenerationChunk]:
        """Stream the generation; the last chunk has ``finished`` and the finish reason.

        Closing the iterator early closes the HTTP stream, which makes the server abort the request.
        """
        if self._closed or self.client is None:
            raise self._unavailable("closed" if self._closed else "not started")
        body = self._body(messages, image, params)
        prompt_tokens = completion_tokens = 0
        finish_reason = ""
        done = False
        try:
            async with self.client.stream("POST", "/v1/chat/completions", json=body,
                                          headers={"X-Request-Id": request_id}) as response:
                if response.status_code != 200:
                    raise error_for_status(response.status_code, _error_detail(await response.aread()), self.name)
                self._responses[request_id] = response
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # SSE blank separators and comments
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    event = json.loads(data)
                    if "error" in event:  # an error after streaming began arrives as an event
                        error = event["error"] if isinstance(event["error"], dict) else {"message": event["error"]}
                        status = error.get("code") if isinstance(error.get("code"), int) else 500
                        raise error_for_status(status, str(error.get("message")), self.name)
                    usage = event.get("usage") or {}
                    prompt_tokens = usage.get("prompt_tokens", prompt_tokens)
                    completion_tokens = usage.get("completion_tokens", completion_tokens)
                    for choice in event.get("choices") or []:
                        delta = (choice.get("delta") or {}).get("content") or ""
                        finish_reason = choice.get("finish_reason") or finish_reason
                        if delta:
                            yield GenerationChunk(delta=delta, prompt_tokens=prompt_tokens,
                                                  completion_tokens=completion_tokens, finished=False)
        except httpx.StreamClosed:
            if request_id not in self._aborted:
                raise
            finish_reason, done = "abort", True  # abort() closed the stream
        except httpx.TransportError as exc:  # connection refused/reset, server gone mid-stream
            self._healthy = False
            raise self._unavailable(f"unreachable ({type(exc).__name__})") from exc
        finally:
            self._responses.pop(request_id, None)
            self._aborted.discard(request_id)
        if not done:
            self._healthy = False
            raise self._unavailable("gone: the stream ended before the generation finished")
        # One final chunk with the totals: the usage-only event arrives after the finish reason.
        yield GenerationChunk(delta="", prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                              finished=True, finish_reason=finish_reason or "stop")

    async def abort(self, request_id: str) -> None:
        """Close the request's HTTP stream; the server aborts the generation when its client disconnects."""
        response = self._responses.pop(request_id, None)
        if response is not None:
            self._aborted.add(request_id)
            await response.aclose()

    async def close(self) -> None:
        """Stop health checks and close every connection."""
        self._closed = True
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        client, self.client = self.client, None
        if client is not None:
            await client.aclose()
