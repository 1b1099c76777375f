"""Asynchronous clients of the three front doors: gRPC (``medclm.v1.MedCLM``), the HTTP API, and the
OpenAI-compatible chat route. Each turns a :class:`RequestSpec` into one call and a :class:`RequestRecord`:
timings, token counts, the service's own timings, and the status (a failure is data, never an exception).

Errors are recorded by the status the transport gives: the gRPC code name (``INVALID_ARGUMENT``), the HTTP
status (``400``), an error sent inside an event stream after its 200 as ``stream:<CODE>``, and what went wrong
on the client side as ``client:<what>`` (``client:timeout``, ``client:connection``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Protocol

from loadtests.metrics import RequestRecord
from loadtests.scenarios import RequestSpec

TARGETS = ("grpc", "http", "openai")
TARGET_KINDS = {"grpc": ("ask", "ask-stream", "segment"), "http": ("ask", "ask-stream", "segment"),
                "openai": ("ask", "ask-stream")}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the service's own default limit


class Client(Protocol):
    """Sends one request and records what happened."""

    async def send(self, spec: RequestSpec, timeout: float) -> RequestRecord:
        """Send ``spec``; never raises for a failed request (the record holds the status)."""

    async def close(self) -> None:
        """Release connections."""


def _server_timings(timings) -> dict[str, float]:
    """The service's timings (a protobuf Timings or the JSON ``timings`` object) as a plain dict."""
    keys = ("queue_ms", "preprocess_ms", "engine_ms", "time_to_first_token_ms", "grounding_ms", "total_ms")
    if timings is None:
        return {}
    if isinstance(timings, dict):
        return {k: float(timings[k]) for k in keys if k in timings}
    return {k: float(getattr(timings, k)) for k in keys}


def _client_status(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "client:timeout"
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return "client:timeout"
    if isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, ConnectionError)):
        return "client:connection"
    return f"client:{type(exc).__name__}"


# --- gRPC --------------------------------------------------------------------------------------------------

class GrpcClient:
    """The generated ``MedCLM`` stubs over one ``grpc.aio`` channel (HTTP/2 multiplexes the concurrency)."""

    def __init__(self, address: str, mask_format: str = "rle"):
        import grpc

        from service.grpc.gen import medclm_pb2, medclm_pb2_grpc

        self.pb = medclm_pb2
        self.grpc = grpc
        self.channel = grpc.aio.insecure_channel(address, options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        self.stub = medclm_pb2_grpc.MedCLMStub(self.channel)
        self.mask_format = medclm_pb2.MASK_FORMAT_RLE if mask_format == "rle" else medclm_pb2.MASK_FORMAT_PNG

    def _image(self, spec: RequestSpec):
        return self.pb.Image(data=spec.image_data, media_type=spec.image.media_type, modality=spec.image.modality)

    def _ask_request(self, spec: RequestSpec):
        return self.pb.AskRequest(image=self._image(spec), question=spec.question, precision=spec.precision,
                                  brief=spec.brief, max_tokens=spec.max_tokens)

    async def send(self, spec: RequestSpec, timeout: float) -> RequestRecord:
        """One Ask, AskStream or Segment call."""
        record = RequestRecord(spec.kind, time.perf_counter())
        try:
            if spec.kind == "ask":
                reply = await self.stub.Ask(self._ask_request(spec), timeout=timeout)
                self._finish_ask(record, reply)
            elif spec.kind == "ask-stream":
                call = self.stub.AskStream(self._ask_request(spec), timeout=timeout)
                async for event in call:
                    if event.WhichOneof("event") == "delta":
                        now = time.perf_counter()
                        if event.delta:
                            record.ttft = record.ttft if record.ttft is not None else now - record.start
                            record.chunk_times.append(now)
                    else:
                        self._finish_ask(record, event.result)
            else:
                reply = await self.stub.Segment(self.pb.SegmentRequest(
                    image=self._image(spec), precision=spec.precision, mask_format=self.mask_format),
                    timeout=timeout)
                record.server = _server_timings(reply.timings)
            record.ok, record.status = True, "OK"
        except self.grpc.aio.AioRpcError as exc:
            record.status, record.error = exc.code().name, exc.details() or ""
        except Exception as exc:  # noqa: BLE001 - a load test records every failure instead of stopping
            record.status, record.error = _client_status(exc), str(exc)
        record.end = time.perf_counter()
        return record

    @staticmethod
    def _finish_ask(record: RequestRecord, reply) -> None:
        record.prompt_tokens = reply.usage.prompt_tokens
        record.output_tokens = reply.usage.completion_tokens
        record.server = _server_timings(reply.timings)

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()


# --- HTTP (the service's own JSON API) ---------------------------------------------------------------------

def _sse_events(lines: list[str]) -> tuple[str | None, str]:
    """(event name, data) of one server-sent event's lines."""
    name, data = None, []
    for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    return name, "\n".join(data)


async def iter_sse(response):
    """Yield ``(event, data)`` for each server-sent event of an httpx streaming response."""
    block: list[str] = []
    async for line in response.aiter_lines():
        if line:
            block.append(line)
        elif block:
            yield _sse_events(block)
            block = []
    if block:
        yield _sse_events(block)


class _HttpBase:
    def __init__(self, base_url: str, concurrency: int):
        import httpx

        self.httpx = httpx
        # One connection per concurrent request: HTTP/1.1 serves one request at a time per connection.
        pool = max(concurrency, 1) + 4
        limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
        self.client = httpx.AsyncClient(base_url=base_url.rstrip("/"), limits=limits, timeout=None)

    @staticmethod
    def _error_status(response, body: bytes) -> tuple[str, str]:
        try:
            message = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = body[:200].decode(errors="replace")
        return str(response.status_code), message

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()


class HttpClient(_HttpBase):
    """``POST /v1/ask``, ``/v1/ask/stream`` (server-sent events) and ``/v1/segment`` with JSON bodies."""

    def __init__(self, base_url: str, concurrency: int = 16, mask_format: str = "rle"):
        super().__init__(base_url, concurrency)
        self.mask_format = mask_format

    @staticmethod
    def _image(spec: RequestSpec) -> dict:
        return {"data_base64": base64.b64encode(spec.image_data).decode(), "media_type": spec.image.media_type,
                "modality": spec.image.modality}

    def _ask_body(self, spec: RequestSpec) -> dict:
        return {"image": self._image(spec), "question": spec.question, "precision": spec.precision,
                "brief": spec.brief, "max_tokens": spec.max_tokens}

    async def send(self, spec: RequestSpec, timeout: float) -> RequestRecord:
        """One HTTP request of ``spec.kind``."""
        record = RequestRecord(spec.kind, time.perf_counter())
        try:
            await asyncio.wait_for(self._send(spec, record), timeout)
        except Exception as exc:  # noqa: BLE001 - recorded, see the module docstring
            record.ok, record.status, record.error = False, _client_status(exc), str(exc)
        record.end = time.perf_counter()
        return record

    async def _send(self, spec: RequestSpec, record: RequestRecord) -> None:
        if spec.kind == "ask-stream":
            async with self.client.stream("POST", "/v1/ask/stream", json=self._ask_body(spec)) as response:
                if response.status_code != 200:
                    record.status, record.error = self._error_status(response, await response.aread())
                    return
                async for event, data in iter_sse(response):
                    now = time.perf_counter()
                    if event == "delta":
                        record.ttft = record.ttft if record.ttft is not None else now - record.start
                        record.chunk_times.append(now)
                    elif event == "result":
                        self._finish_ask(record, json.loads(data))
                    elif event == "error":
                        error = json.loads(data).get("error", {})
                        record.status, record.error = f"stream:{error.get('code', 'UNKNOWN')}", error.get("message", "")
                        return
            record.ok, record.status = True, "200"
            return
        if spec.kind == "ask":
            response = await self.client.post("/v1/ask", json=self._ask_body(spec))
        else:
            response = await self.client.post("/v1/segment", json={"image": self._image(spec),
                                                                    "precision": spec.precision,
                                                                    "mask_format": self.mask_format})
        if response.status_code != 200:
            record.status, record.error = self._error_status(response, response.content)
            return
        body = response.json()
        if spec.kind == "ask":
            self._finish_ask(record, body)
        else:
            record.server = _server_timings(body.get("timings"))
        record.ok, record.status = True, "200"

    @staticmethod
    def _finish_ask(record: RequestRecord, body: dict) -> None:
        usage = body.get("usage") or {}
        record.prompt_tokens = int(usage.get("prompt_tokens", 0))
        record.output_tokens = int(usage.get("completion_tokens", 0))
        record.server = _server_timings(body.get("timings"))


# --- OpenAI-compatible chat --------------------------------------------------------------------------------

class OpenAIClient(_HttpBase):
    """``POST /v1/chat/completions`` in OpenAI's wire format: the image as a data URL, streamed for
    ``ask-stream`` (with ``stream_options.include_usage`` for the token counts)."""

    def __init__(self, base_url: str, concurrency: int = 16, model: str = ""):
        super().__init__(base_url, concurrency)
        self.model = model

    def _body(self, spec: RequestSpec, stream: bool) -> dict:
        url = f"data:{spec.image.media_type};base64,{base64.b64encode(spec.image_data).decode()}"
        body = {"model": self.model, "max_tokens": spec.max_tokens, "temperature": 0, "stream": stream,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                          {"type": "text", "text": spec.question}]}]}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    async def send(self, spec: RequestSpec, timeout: float) -> RequestRecord:
        """One chat completion, streamed for ``ask-stream``."""
        record = RequestRecord(spec.kind, time.perf_counter())
        try:
            await asyncio.wait_for(self._send(spec, record), timeout)
        except Exception as exc:  # noqa: BLE001 - recorded, see the module docstring
            record.ok, record.status, record.error = False, _client_status(exc), str(exc)
        record.end = time.perf_counter()
        return record

    async def _send(self, spec: RequestSpec, record: RequestRecord) -> None:
        if spec.kind == "segment":
            record.status, record.error = "client:unsupported", "the OpenAI route has no segmentation"
            return
        if spec.kind == "ask":
            response = await self.client.post("/v1/chat/completions", json=self._body(spec, False))
            if response.status_code != 200:
                record.status, record.error = self._error_status(response, response.content)
                return
            usage = response.json().get("usage") or {}
            record.prompt_tokens = int(usage.get("prompt_tokens", 0))
            record.output_tokens = int(usage.get("completion_tokens", 0))
            record.ok, record.status = True, "200"
            return
        async with self.client.stream("POST", "/v1/chat/completions", json=self._body(spec, True)) as response:
            if response.status_code != 200:
                record.status, record.error = self._error_status(response, await response.aread())
                return
            async for _, data in iter_sse(response):
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    record.status = f"stream:{chunk['error'].get('code', 'UNKNOWN')}"
                    record.error = chunk["error"].get("message", "")
                    return
                if chunk.get("usage"):
                    record.prompt_tokens = int(chunk["usage"].get("prompt_tokens", 0))
                    record.output_tokens = int(chunk["usage"].get("completion_tokens", 0))
                for choice in chunk.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        now = time.perf_counter()
                        record.ttft = record.ttft if record.ttft is not None else now - record.start
                        record.chunk_times.append(now)
        record.ok, record.status = True, "200"


def make_client(target: str, address: str, concurrency: int = 16, mask_format: str = "rle") -> Client:
    """The client of ``target`` for ``address`` (``host:port``)."""
    if target == "grpc":
        return GrpcClient(address, mask_format)
    if target == "http":
        return HttpClient(f"http://{address}", concurrency, mask_format)
    if target == "openai":
        return OpenAIClient(f"http://{address}", concurrency)
    raise ValueError(f"unknown target {target!r}; targets: {', '.join(TARGETS)}")
