"""Expected failures of the service: one ErrorCode enum, one exception, and the two transport tables.

The core raises :class:`ServiceError` for every failure a caller can cause or should know about. The HTTP
and gRPC front doors map the code through :data:`HTTP_STATUS` and :data:`GRPC_STATUS` and nothing else, so
both transports always agree. Anything else is INTERNAL: logged once with its traceback and the request id,
shown to the caller only as "internal error".
"""

from __future__ import annotations

import enum

import grpc


class ErrorCode(str, enum.Enum):
    """What went wrong, independent of the transport."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    OVERLOADED = "OVERLOADED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_ARGUMENT: 400,  # 422 only for bodies FastAPI itself cannot parse into the schema
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.OVERLOADED: 429,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}

GRPC_STATUS: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.PAYLOAD_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}

INTERNAL_MESSAGE = "internal error"


class ServiceError(Exception):
    """An expected failure: ``code`` picks the status, ``message`` is safe to show, ``field`` names the
    request field at fault (dotted path) when there is one. ``retry_after`` (seconds) goes with OVERLOADED
    and UNAVAILABLE."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.field = field
        self.retry_after = retry_after

    def body(self, request_id: str | None) -> dict:
        """The shared error body: ``{"error": {"code", "message", "field", "request_id"}}``."""
        return {"error": {"code": self.code.value, "message": self.message, "field": self.field,
                          "request_id": request_id}}


def invalid(message: str, field: str | None = None) -> ServiceError:
    """Shorthand for the most common error: INVALID_ARGUMENT on one field."""
    return ServiceError(ErrorCode.INVALID_ARGUMENT, message, field)
