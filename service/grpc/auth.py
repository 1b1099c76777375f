"""API-key check for every gRPC method (MedCLM, health, reflection; see :mod:`service.auth`).

A ``grpc.aio.ServerInterceptor``: it sees every call before any handler, reads ``authorization: Bearer <key>``
from the metadata, and for a refused call returns a handler of the same kind that only aborts with
UNAUTHENTICATED or PERMISSION_DENIED (trailing metadata as for any error), counts it and logs one line.
The request message is never deserialised for a refused call beyond what grpc does itself.
"""

from __future__ import annotations

import logging

import grpc

from service.auth import Authenticator, grpc_scope
from service.errors import GRPC_STATUS, ServiceError
from service.grpc.interceptors import TRANSPORT, error_metadata, request_id_from_metadata
from service.metrics import ServiceMetrics

log = logging.getLogger("medclm.grpc")

_HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid key (UNAUTHENTICATED) or whose key does not cover the method's scope
    (PERMISSION_DENIED); open scopes pass untouched."""

    def __init__(self, authenticator: Authenticator, metrics: ServiceMetrics):
        self.authenticator = authenticator
        self.metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        """The real handler, or one that aborts the call."""
        method = handler_call_details.method
        scope = grpc_scope(method)
        if self.authenticator.is_open(scope):
            return await continuation(handler_call_details)
        metadata = tuple(handler_call_details.invocation_metadata or ())
        authorization = next((v for k, v in metadata if k == "authorization" and isinstance(v, str)), None)
        try:
            self.authenticator.check(authorization, scope)
        except ServiceError as error:
            handler = await continuation(handler_call_details)
            if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
                return None
            return self._refusing(handler, method, error, request_id_from_metadata(metadata))
        return await continuation(handler_call_details)

    def _refusing(self, handler, method: str, error: ServiceError, request_id: str):
        status = GRPC_STATUS[error.code]

        async def refuse(request_or_iterator, context):
            self.metrics.requests.labels(transport=TRANSPORT, route=method, code=status.name).inc()
            log.info("request", extra={"request_id": request_id, "route": method, "status": status.name,
                                       "transport": TRANSPORT, "error_code": error.code.value})
            await context.abort(status, error.message, trailing_metadata=error_metadata(error, request_id))

        factory = _HANDLER_FACTORIES[(handler.request_streaming, handler.response_streaming)]
        return factory(refuse, request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)
