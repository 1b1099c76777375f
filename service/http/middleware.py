"""Two small ASGI middlewares: request context (id, metrics, access log, last-resort 500) and the body limit.

Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``, which buffers streaming responses and hides
client disconnects from the routes.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ErrorCode, ServiceError
from service.http.error_handlers import CLIENT_CLOSED_REQUEST, error_response
from service.logging import request_id_var, request_log_fields_var
from service.metrics import ServiceMetrics

log = logging.getLogger("medclm.http")

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_CHARS = 64
_NOT_REQUEST_ID = re.compile(r"[^A-Za-z0-9._-]")
UNMATCHED_ROUTE = "unmatched"  # one label for every unknown path, so scanners cannot blow up the metrics
QUIET_ROUTES = ("/health/live", "/health/ready", "/metrics")  # probes and scrapes log at DEBUG


def sanitize_request_id(raw: str | None) -> str:
    """The caller's ``X-Request-ID`` reduced to at most 64 characters of ``[A-Za-z0-9._-]`` (it ends up in
    logs and headers); a fresh uuid4 hex when nothing usable is left."""
    cleaned = _NOT_REQUEST_ID.sub("", raw or "")[:MAX_REQUEST_ID_CHARS]
    return cleaned or uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    """The path template of the route serving ``scope`` (``/v1/models/{model_id}``), never the raw path."""
    app = scope.get("app")
    for route in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return getattr(route, "path", UNMATCHED_ROUTE)
    return UNMATCHED_ROUTE


def _media_type(content_type: str | None) -> str | None:
    return content_type.split(";", 1)[0].strip().lower() if content_type else None


class RequestContextMiddleware:
    """Assigns the request id (echoed as ``X-Request-ID``), counts the request in the metrics (transport
    "http", route template, status code), writes one access log line, and turns an exception nothing else
    handled into a logged 500 with the shared error body."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = sanitize_request_id(headers.get(REQUEST_ID_HEADER))
        state = scope.setdefault("state", {})
        state.update(request_id=request_id, arrived=time.monotonic(), log_fields={})
        route = route_template(scope)
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        token = request_id_var.set(request_id)
        fields_token = request_log_fields_var.set(state["log_fields"])
        in_flight = self.metrics.in_flight.labels(transport="http")
        in_flight.inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            status = status or CLIENT_CLOSED_REQUEST
        except Exception as exc:  # noqa: BLE001 - the last resort: log once, answer 500, never a traceback
            log.error("unhandled error", exc_info=exc, extra={"route": route, "request_id": request_id})
            if status is None:
                internal = ServiceError(ErrorCode.INTERNAL, "internal error")
                await error_response(internal, request_id)(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            in_flight.dec()
            code = str(status or 500)
            self.metrics.requests.labels(transport="http", route=route, code=code).inc()
            self.metrics.latency.labels(transport="http", route=route).observe(seconds)
            fields = {"request_id": request_id, "route": route, "status": status or 500,
                      "duration_ms": round(seconds * 1000.0, 3),
                      "method": scope.get("method"), "transport": "http",
                      "content_type": _media_type(headers.get("content-type")),
                      "request_bytes": state.get("request_bytes", 0), **state.get("log_fields", {})}
            log.log(logging.DEBUG if route in QUIET_ROUTES else logging.INFO, "request", extra=fields)
            request_log_fields_var.reset(fields_token)
            request_id_var.reset(token)


class RequestTooLarge(HTTPException):
    """Raised from ``receive`` once a body grows past the limit. An HTTPException, because FastAPI re-raises
    those from its own body parsing (any other exception there becomes a generic 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes")


class BodySizeLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413 before reading them: at once when ``Content-Length`` says
    so, else (chunked uploads) as soon as the bytes received pass the limit. Records the body size for the
    access log."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            state["request_bytes"] = int(declared)
            too_large = ServiceError(ErrorCode.PAYLOAD_TOO_LARGE,
                                     f"the request body is larger than the limit of {self.max_bytes} bytes")
            await error_response(too_large, state.get("request_id"))(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                state["request_bytes"] = received
                if received > self.max_bytes:
                    raise RequestTooLarge(self.max_bytes)
            return message

        await self.app(scope, receive_within_limit, send)
