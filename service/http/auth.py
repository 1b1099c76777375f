"""API-key check for every HTTP route (see :mod:`service.auth`), as plain ASGI middleware.

It sits inside the request-context middleware (so a refusal carries the request id, is counted and logged)
and outside the body limit and the routes, so an unauthenticated caller is refused before its body is read.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import Authenticator, http_scope
from service.errors import ErrorCode, ServiceError
from service.http.error_handlers import error_response
from service.http.middleware import route_template


class ApiKeyMiddleware:
    """401 (``WWW-Authenticate: Bearer``) without a valid key, 403 when the key does not cover the route."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.authenticator.enabled:
            await self.app(scope, receive, send)
            return
        try:
            self.authenticator.check(Headers(scope=scope).get("authorization"), http_scope(route_template(scope)))
        except ServiceError as error:
            response = error_response(error, scope.get("state", {}).get("request_id"))
            if error.code is ErrorCode.UNAUTHENTICATED:
                response.headers["WWW-Authenticate"] = 'Bearer realm="medclm"'
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
