"""``POST /v1/chat/completions``: OpenAI-compatible chat over the same core, streamed or not.

Any OpenAI client works unchanged: the image goes in as an ``image_url`` data URL, the answer comes back as
the message content (the model's whole text, reasoning included), with MedCLM's structured result beside
it under ``medclm``. Streams are ``data: {chunk}`` lines ending with ``data: [DONE]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.core.api import ServiceCore
from service.core.types import AskEvent
from service.errors import ErrorCode, ServiceError
from service.http.chat_schemas import (ChatCompletionRequest, ChatCompletionResponse, completion_chunk,
                                       finish_reason)
from service.http.dependencies import core_of, request_id
from service.http.error_handlers import error_response
from service.http.parsing import request_deadline
from service.http.schemas import ERROR_RESPONSES
from service.http.streaming import (EventStreamResponse, close_quietly, first_item, sse_event,
                                    unless_disconnected)

log = logging.getLogger("medclm.http")
router = APIRouter(tags=["openai"])
DONE = "[DONE]"


def default_vqa_model(core: ServiceCore) -> str:
    """The model a request without ``model`` gets (fp32 VQA variant first), for stream chunks sent before
    the result names it."""
    vqa = [m for m in core.list_models() if m.kind == "vqa"]
    vqa.sort(key=lambda m: m.precision != "fp32")
    return vqa[0].name if vqa else ""


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "JSON, or with stream=true `data: {chunk}` lines and `data: [DONE]`"},
                        **ERROR_RESPONSES},
             summary="OpenAI-compatible chat completion with one image")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response | ChatCompletionResponse:
    """One question (last user message) about one image (a data URL); remote URLs, system messages and
    several images are refused with 400."""
    rid = request_id(request)
    ask_request = body.to_core(rid, request_deadline(request))
    core = core_of(request)
    completion_id = f"chatcmpl-{rid}"
    if not body.stream:
        result = await unless_disconnected(request, core.ask(ask_request))
        return ChatCompletionResponse.from_core(result, completion_id)
    events = core.ask_stream(ask_request)
    first = await first_item(request, events)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    chunks = _chunks(first, events, completion_id, body.model or default_vqa_model(core), include_usage, rid)
    return EventStreamResponse(chunks)


async def _chunks(first: AskEvent, events: AsyncIterator[AskEvent], completion_id: str, model: str,
                  include_usage: bool, rid: str) -> AsyncIterator[bytes]:
    """Role chunk, content chunks, the finishing chunk (and usage), then ``[DONE]``; closing this generator
    closes ``events`` (the engine aborts)."""
    created = int(time.time())
    try:
        yield sse_event(None, completion_chunk(completion_id, created, model, {"role": "assistant", "content": ""}))
        event: AskEvent | None = first
        while event is not None and event.result is None:
            if event.delta:
                yield sse_event(None, completion_chunk(completion_id, created, model, {"content": event.delta}))
            event = await anext(events, None)
        if event is None:
            raise ServiceError(ErrorCode.INTERNAL, "the generation ended without a result")
        result = event.result
        yield sse_event(None, completion_chunk(completion_id, created, result.model, {},
                                               finish_reason(result.finish_reason)))
        if include_usage:
            usage = {"prompt_tokens": result.usage.prompt_tokens, "completion_tokens": result.usage.completion_tokens,
                     "total_tokens": result.usage.prompt_tokens + result.usage.completion_tokens}
            yield sse_event(None, completion_chunk(completion_id, created, result.model, {}, usage=usage,
                                                   choices=False))
    except ServiceError as error:
        if error.code is ErrorCode.INTERNAL:
            log.error("internal error during a stream: %s", error.message)
        yield sse_event(None, error_response(error, rid).body.decode())
    except Exception as exc:  # noqa: BLE001 - the response has started: report in-band, log once
        log.error("unhandled error during a stream", exc_info=exc)
        yield sse_event(None, error_response(ServiceError(ErrorCode.INTERNAL, "internal error"), rid).body.decode())
    finally:
        await close_quietly(events)
    yield sse_event(None, DONE)
