"""What every MedCLM RPC does around the core call: request id, deadline, error mapping, metrics and the
access log line.

A decorator rather than a ``grpc.aio.ServerInterceptor``: an aio interceptor only sees the method name and
would have to rebuild each handler to time it, while the decorator sees the call from start to status.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import grpc

from service.errors import GRPC_STATUS, INTERNAL_MESSAGE, ErrorCode, ServiceError
from service.logging import request_id_var, request_log_fields_var
from service.metrics import ServiceMetrics

log = logging.getLogger("medclm.grpc")

TRANSPORT = "grpc"
REQUEST_ID_KEY = "x-request-id"
# The same rule as the HTTP front door: a caller's id ends up in logs and metadata, so only a short id of
# plain characters is kept.
MAX_REQUEST_ID_CHARS = 64
_NOT_REQUEST_ID = re.compile(r"[^A-Za-z0-9._-]")


@dataclass
class RpcScope:
    """What the servicer needs from the call besides the message, and what it adds to the access log."""

    request_id: str
    deadline: float | None  # time.monotonic() by which the caller wants the answer; None = no deadline
    log_fields: dict = field(default_factory=dict)  # allow-listed fields of service.logging (sizes, model)


def request_id_from_metadata(metadata) -> str:
    """The ``x-request-id`` of invocation metadata reduced to at most 64 characters of ``[A-Za-z0-9._-]``;
    a new uuid4 hex when there is none or nothing usable is left."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            cleaned = _NOT_REQUEST_ID.sub("", value)[:MAX_REQUEST_ID_CHARS]
            if cleaned:
                return cleaned
    return uuid.uuid4().hex


def request_id_from(context: grpc.aio.ServicerContext) -> str:
    """The caller's ``x-request-id`` (see :func:`request_id_from_metadata`)."""
    return request_id_from_metadata(context.invocation_metadata())


def deadline_from(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline on the ``time.monotonic()`` clock the core uses; None when the caller set none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def error_metadata(error: ServiceError, request_id: str) -> tuple[tuple[str, str], ...]:
    """Trailing metadata carrying the shared error body's fields (the message is the status details)."""
    pairs = [("error-code", error.code.value), ("request-id", request_id)]
    if error.field:
        pairs.append(("error-field", error.field))
    if error.retry_after is not None:
        pairs.append(("retry-after", str(max(0, math.ceil(error.retry_after)))))  # whole seconds, like HTTP's
    return tuple(pairs)


def _cancelled_code(context: grpc.aio.ServicerContext) -> str:
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"


class _CallRecord:
    """In-flight gauge, request counter, latency and the access log line of one call. ``finish`` runs once,
    and before an abort: ``context.abort`` sends the status before it raises, so the caller may already
    hold the answer when the handler's ``finally`` runs."""

    def __init__(self, metrics: ServiceMetrics, route: str, scope: RpcScope):
        self.metrics = metrics
        self.route = route
        self.scope = scope
        self.started = time.perf_counter()
        self.finished = False
        metrics.in_flight.labels(transport=TRANSPORT).inc()

    def finish(self, code: str, error_code: str | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        seconds = time.perf_counter() - self.started
        self.metrics.in_flight.labels(transport=TRANSPORT).dec()
        self.metrics.requests.labels(transport=TRANSPORT, route=self.route, code=code).inc()
        self.metrics.latency.labels(transport=TRANSPORT, route=self.route).observe(seconds)
        fields = {"request_id": self.scope.request_id, "route": self.route, "status": code,
                  "duration_ms": round(seconds * 1000.0, 3), "transport": TRANSPORT, **self.scope.log_fields}
        if error_code:
            fields["error_code"] = error_code
        log.info("request", extra=fields)


async def serve_rpc(route: str, metrics: ServiceMetrics, request, context: grpc.aio.ServicerContext,
                    call: Callable[[RpcScope], Awaitable[object]]) -> object:
    """Run ``call`` for one RPC: send the request id in the initial metadata (and set it for the logs),
    map a :class:`ServiceError` to its status with trailing metadata, turn anything else into INTERNAL
    "internal error" (logged once with its traceback), count the request by route and status code, its
    latency and the in-flight gauge, and write one access log line."""
    scope = RpcScope(request_id=request_id_from(context), deadline=deadline_from(context),
                     log_fields={"request_bytes": request.ByteSize()})
    request_id = scope.request_id
    token = request_id_var.set(request_id)
    fields_token = request_log_fields_var.set(scope.log_fields)
    record = _CallRecord(metrics, route, scope)
    try:
        await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
        result = await call(scope)
        record.finish(grpc.StatusCode.OK.name)
        return result
    except ServiceError as error:
        status = GRPC_STATUS[error.code]
        if error.code is ErrorCode.INTERNAL:
            log.error("%s failed: %s (request %s)", route, error.message, request_id,
                      extra={"request_id": request_id, "route": route, "error_code": error.code.value})
        record.finish(status.name, error.code.value)
        await context.abort(status, error.message, trailing_metadata=error_metadata(error, request_id))
    except grpc.aio.AbortError:  # the handler aborted the call itself; its status is already set
        record.finish(getattr(context.code(), "name", "UNKNOWN"))
        raise
    except asyncio.CancelledError:  # the caller went away or its deadline passed
        record.finish(_cancelled_code(context))
        raise
    except Exception:
        log.exception("%s failed with an unexpected error (request %s)", route, request_id,
                      extra={"request_id": request_id, "route": route})
        record.finish(grpc.StatusCode.INTERNAL.name, ErrorCode.INTERNAL.value)
        await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE,
                            trailing_metadata=(("error-code", ErrorCode.INTERNAL.value), ("request-id", request_id)))
    finally:
        record.finish("UNKNOWN")  # reached unfinished only by an exception outside Exception's family
        request_log_fields_var.reset(fields_token)
        request_id_var.reset(token)


def rpc_method(route: str):
    """Decorate a servicer method ``(self, request, context, scope)`` into the ``(self, request, context)``
    handler grpc calls, wrapped in :func:`serve_rpc`; the servicer provides ``self.metrics``."""

    def decorate(method):
        @functools.wraps(method)
        async def handler(self, request, context):
            return await serve_rpc(route, self.metrics, request, context,
                                   lambda scope: method(self, request, context, scope))

        return handler

    return decorate
