"""API keys for both transports: who may call which scope of routes.

Authentication is on as soon as one key is configured (``MEDCLM_API_KEYS`` comma-separated, and/or
``MEDCLM_API_KEYS_FILE`` with one key per line). Callers send ``Authorization: Bearer <key>`` as an HTTP
header or as gRPC metadata. A key is ``KEY`` (every scope) or ``KEY:scope+scope`` (only those scopes, e.g.
``pacs-7f3a:segment`` may call Segment and nothing else). Routes are grouped into scopes (:data:`SCOPES`);
the scopes in ``open_routes`` (default health and metrics, so probes and scrapers need no key) are served
without one. Every other route, unknown paths included, needs a key.

Keys are compared in constant time (``hmac.compare_digest`` over SHA-256 digests, every key compared on every
call) and never logged: the service keeps only their digests after start-up.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from service.config import Settings
from service.errors import ErrorCode, ServiceError

SCOPES = ("ask", "segment", "models", "health", "metrics", "docs", "reflection")
BEARER = "bearer"

# HTTP route templates (service.http.middleware.route_template) → scope.
HTTP_ROUTE_SCOPES = {
    "/v1/ask": "ask", "/v1/ask/stream": "ask", "/v1/chat/completions": "ask",
    "/v1/segment": "segment",
    "/v1/models": "models", "/v1/models/{model_id}": "models",
    "/health/live": "health", "/health/ready": "health",
    "/metrics": "metrics",
    "/docs": "docs", "/docs/oauth2-redirect": "docs", "/openapi.json": "docs",
}
# gRPC full method names → scope; whole services by prefix.
GRPC_METHOD_SCOPES = {
    "/medclm.v1.MedCLM/Ask": "ask", "/medclm.v1.MedCLM/AskStream": "ask",
    "/medclm.v1.MedCLM/Segment": "segment", "/medclm.v1.MedCLM/ListModels": "models",
}
GRPC_SERVICE_SCOPES = {"/grpc.health.v1.Health/": "health", "/grpc.reflection.": "reflection"}


def http_scope(route: str) -> str | None:
    """The scope of an HTTP route template; None for a path the service does not serve."""
    return HTTP_ROUTE_SCOPES.get(route)


def grpc_scope(method: str) -> str | None:
    """The scope of a gRPC full method name (``/package.Service/Method``); None for an unknown method."""
    if method in GRPC_METHOD_SCOPES:
        return GRPC_METHOD_SCOPES[method]
    for prefix, scope in GRPC_SERVICE_SCOPES.items():
        if method.startswith(prefix):
            return scope
    return None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class ApiKey:
    """One configured key, kept only as its digest; ``scopes`` None means every scope."""

    digest: bytes
    scopes: frozenset[str] | None


def parse_key(entry: str) -> ApiKey:
    """``KEY`` or ``KEY:scope+scope`` → :class:`ApiKey`; ValueError (without the key in the message) for an
    empty key or an unknown scope."""
    key, _, scopes_text = entry.strip().partition(":")
    key = key.strip()
    if not key:
        raise ValueError("an API key entry has an empty key")
    if not scopes_text.strip():
        return ApiKey(_digest(key), None)
    scopes = frozenset(s.strip() for s in scopes_text.split("+") if s.strip())
    unknown = sorted(scopes - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"an API key entry names unknown scopes {unknown}; scopes are {', '.join(SCOPES)}")
    return ApiKey(_digest(key), scopes)


def read_keys_file(path: Path) -> list[str]:
    """Key entries of a keys file: one per line, blank lines and ``#`` comments ignored."""
    entries = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append(line)
    return entries


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value; None when absent or another scheme."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == BEARER and token else None


class Authenticator:
    """Decides whether a call to a scope may proceed (see the module docstring)."""

    def __init__(self, keys: list[ApiKey], open_scopes: list[str] | tuple[str, ...] = ("health", "metrics")):
        unknown = sorted(set(open_scopes) - set(SCOPES))
        if unknown:
            raise ValueError(f"open_routes names unknown scopes {unknown}; scopes are {', '.join(SCOPES)}")
        self.keys = list(keys)
        self.open_scopes = frozenset(open_scopes)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Authenticator":
        """Keys from ``api_keys`` and ``api_keys_file``; ValueError for a malformed entry or unreadable file."""
        entries = [k.get_secret_value() for k in settings.api_keys]
        if settings.api_keys_file is not None:
            try:
                entries += read_keys_file(settings.api_keys_file)
            except OSError as exc:
                raise ValueError(f"api_keys_file {settings.api_keys_file} cannot be read: {exc.strerror}") from None
        return cls([parse_key(e) for e in entries], settings.open_routes)

    @property
    def enabled(self) -> bool:
        """Authentication is on (at least one key is configured)."""
        return bool(self.keys)

    def is_open(self, scope: str | None) -> bool:
        """No key is needed for ``scope`` (authentication off, or an open scope)."""
        return not self.enabled or (scope is not None and scope in self.open_scopes)

    def _match(self, token: str) -> ApiKey | None:
        presented = _digest(token)
        found = None
        for key in self.keys:  # every key is compared, so the time taken does not tell which one matched
            if hmac.compare_digest(presented, key.digest) and found is None:
                found = key
        return found

    def check(self, authorization: str | None, scope: str | None) -> None:
        """Return when the call may proceed; UNAUTHENTICATED without a valid key, PERMISSION_DENIED when the
        key does not cover ``scope``. An unknown route (``scope`` None) needs any valid key."""
        if self.is_open(scope):
            return
        token = bearer_token(authorization)
        if token is None:
            raise ServiceError(ErrorCode.UNAUTHENTICATED,
                               "an API key is required: send the header 'Authorization: Bearer <key>'")
        key = self._match(token)
        if key is None:
            raise ServiceError(ErrorCode.UNAUTHENTICATED, "the API key is not valid")
        if scope is not None and key.scopes is not None and scope not in key.scopes:
            raise ServiceError(ErrorCode.PERMISSION_DENIED,
                               f"this API key may not call {scope} routes (it may call: "
                               f"{', '.join(sorted(key.scopes))})")
