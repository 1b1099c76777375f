"""``POST /v1/ask`` (one answer) and ``POST /v1/ask/stream`` (server-sent events), JSON or multipart."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response

from service.core.types import AskEvent, AskRequest
from service.errors import ErrorCode, ServiceError, invalid
from service.http.dicom_response import DICOM_CONTENT, result_response
from service.http.dependencies import core_of, request_id
from service.http.error_handlers import error_response
from service.http.parsing import image_request_openapi, read_image_request, request_deadline
from service.http.schemas import ERROR_RESPONSES, AskOptions, AskRequestBody, AskResponseBody
from service.http.streaming import (EventStreamResponse, close_quietly, first_item, sse_event,
                                    unless_disconnected)
from service.pacs.outputs import wants_dicom

log = logging.getLogger("medclm.http")
router = APIRouter(tags=["vqa"])
ASK_BODY = image_request_openapi(AskRequestBody, AskOptions)


async def read_ask_request(request: Request) -> AskRequest:
    """The core's :class:`AskRequest` from a JSON or multipart body, with request id and deadline."""
    options, image = await read_image_request(request, AskRequestBody, AskOptions)
    assert isinstance(options, AskOptions)
    return options.to_core(image, request_id(request), request_deadline(request, options.timeout_s))


@router.post("/v1/ask", response_model=AskResponseBody,
             responses={200: {"content": DICOM_CONTENT}, **ERROR_RESPONSES}, openapi_extra=ASK_BODY,
             summary="Answer a question about an image, with reasoning, boxes and the grounding check")
async def ask(request: Request) -> AskResponseBody | Response:
    """JSON (``image.data_base64`` or ``image.dicomweb``) or multipart (file part ``image`` plus the option
    fields). With DICOM output formats the answer is ``application/dicom`` or ``multipart/related``
    (service.http.dicom_response)."""
    ask_request = await read_ask_request(request)
    result = await unless_disconnected(request, core_of(request).ask(ask_request))
    return result_response(AskResponseBody.from_core(result), result.dicom_outputs, ask_request.output_formats)


@router.post("/v1/ask/stream", response_class=EventStreamResponse, openapi_extra=ASK_BODY,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "`event: delta` {\"text\"} ..., `event: result` (the /v1/ask "
                                             "body), `event: done`; `event: error` (error body) on failure"},
                        **ERROR_RESPONSES},
             summary="The same answer as server-sent events: text deltas, then the full result")
async def ask_stream(request: Request) -> EventStreamResponse:
    """Errors found before the first event get their HTTP status; later ones arrive as ``event: error``."""
    ask_request = await read_ask_request(request)
    if wants_dicom(ask_request.output_formats):
        raise invalid("the event stream carries JSON only; ask POST /v1/ask for DICOM outputs", "output_formats")
    events = core_of(request).ask_stream(ask_request)
    first = await first_item(request, events)
    return EventStreamResponse(_ask_events(first, events, request_id(request)))


def _error_event(error: ServiceError, rid: str) -> bytes:
    return sse_event("error", error_response(error, rid).body.decode())


async def _ask_events(first: AskEvent, events: AsyncIterator[AskEvent], rid: str) -> AsyncIterator[bytes]:
    """``delta`` events, the ``result`` event, then ``done``; closing this generator closes ``events``."""
    try:
        event: AskEvent | None = first
        while event is not None:
            if event.result is not None:
                yield sse_event("result", AskResponseBody.from_core(event.result).model_dump(mode="json"))
                break
            if event.delta:
                yield sse_event("delta", {"text": event.delta})
            event = await anext(events, None)
        else:
            raise ServiceError(ErrorCode.INTERNAL, "the generation ended without a result")
    except ServiceError as error:
        if error.code is ErrorCode.INTERNAL:
            log.error("internal error during a stream: %s", error.message)
        yield _error_event(error, rid)
    except Exception as exc:  # noqa: BLE001 - the response has started: report in-band, log once
        log.error("unhandled error during a stream", exc_info=exc)
        yield _error_event(ServiceError(ErrorCode.INTERNAL, "internal error"), rid)
    finally:
        await close_quietly(events)  # the engine aborts when the client is gone
    yield sse_event("done", {})
