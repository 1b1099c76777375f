"""Every failure becomes the shared error body ``{"error": {"code", "message", "field", "request_id"}}``.

:class:`ServiceError` maps through ``HTTP_STATUS`` (the one table both transports use); FastAPI's schema
validation errors become 422 INVALID_ARGUMENT naming the field; Starlette's HTTP errors (unknown route,
wrong method, body too large) keep their status with the matching code. Unknown exceptions are handled by
:class:`service.http.middleware.RequestContextMiddleware`, which logs them once and answers 500.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from service.errors import HTTP_STATUS, INTERNAL_MESSAGE, ErrorCode, ServiceError

log = logging.getLogger("medclm.http")

CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away before the answer"
_CODE_BY_STATUS = {status: code for code, status in HTTP_STATUS.items()}
_LOC_SOURCES = ("body", "query", "header", "path", "cookie")


class ClientGone(Exception):
    """The client disconnected before its answer was ready; nothing can be sent any more."""


def request_id_of(request: Request) -> str | None:
    """The request id the middleware assigned (None outside the middleware, e.g. in a bare router)."""
    return getattr(request.state, "request_id", None)


def error_response(error: ServiceError, request_id: str | None) -> JSONResponse:
    """The HTTP response for ``error``: status from ``HTTP_STATUS``, the shared body, ``Retry-After`` when
    the error says when to retry. INTERNAL errors never show their message."""
    body = error.body(request_id)
    if error.code is ErrorCode.INTERNAL:
        body["error"]["message"] = INTERNAL_MESSAGE
    headers = {}
    if error.retry_after is not None:
        # Retry-After takes whole seconds; round up so a client never retries too early.
        headers["Retry-After"] = str(max(0, math.ceil(error.retry_after)))
    return JSONResponse(body, status_code=HTTP_STATUS[error.code], headers=headers)


def field_path(loc: tuple | list) -> str | None:
    """A pydantic error location as the dotted field path used in error bodies: ``("body", "image",
    "data_base64")`` → ``image.data_base64``, list indices as ``[i]``; None for the body as a whole."""
    parts = list(loc)
    if parts and parts[0] in _LOC_SOURCES:
        parts = parts[1:]
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path or None


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    if exc.code is ErrorCode.INTERNAL:
        log.error("internal error: %s", exc.message, extra={"error_code": exc.code.value})
    return error_response(exc, request_id_of(request))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = field_path(first.get("loc", ()))
    message = str(first.get("msg", "invalid request"))
    if field:
        message = f"{field}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    body = ServiceError(ErrorCode.INVALID_ARGUMENT, message, field).body(request_id_of(request))
    return JSONResponse(body, status_code=422)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _CODE_BY_STATUS.get(exc.status_code, ErrorCode.INVALID_ARGUMENT)
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    body = ServiceError(code, message).body(request_id_of(request))
    return JSONResponse(body, status_code=exc.status_code, headers=dict(exc.headers or {}))


async def _client_gone(request: Request, exc: Exception) -> Response:
    # Nobody reads this response; the status only shows up in the access log and the metrics.
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every expected failure into the shared error body."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_exception)
    app.add_exception_handler(ClientGone, _client_gone)
