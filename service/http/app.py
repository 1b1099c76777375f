"""``create_app``: the FastAPI application around one :class:`ServiceCore`.

Routes only decode, call the core and encode (one module per feature); errors, request ids, the body
limit, metrics and access logs are handled here once for all of them.
"""

from __future__ import annotations

import time
from importlib import metadata

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from service.auth import Authenticator
from service.config import Settings
from service.core.api import ServiceCore
from service.http import ask, health, models, openai_chat, segment
from service.http.auth import ApiKeyMiddleware
from service.http.error_handlers import install_error_handlers
from service.http.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from service.http.schemas import AskRequestBody, SegmentRequestBody
from service.metrics import ServiceMetrics

TITLE = "MedCLM service"
DESCRIPTION = ("Grounded medical visual question answering with step-by-step reasoning (MedCLM) and organ "
               "segmentation. Boxes come back in the image's original pixels (`box_px`) and in the model's "
               "[0, 1000) convention (`box_norm`). Errors always have the body "
               "`{\"error\": {\"code\", \"message\", \"field\", \"request_id\"}}`.")
# Bodies that routes read themselves (JSON or multipart) and reference from ``openapi_extra``.
MANUALLY_READ_BODIES = (AskRequestBody, SegmentRequestBody)


def _version() -> str:
    try:
        return metadata.version("medclm-service")
    except metadata.PackageNotFoundError:
        return "0.0.0+local"


def openapi_schema(app: FastAPI) -> dict:
    """FastAPI's OpenAPI document plus the schemas of the bodies routes read themselves."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description,
                               routes=app.routes)
        _, definitions = models_json_schema([(m, "validation") for m in MANUALLY_READ_BODIES],
                                            ref_template="#/components/schemas/{model}")
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, schema in definitions.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        app.openapi_schema = document
    return app.openapi_schema


def create_app(core: ServiceCore, settings: Settings, metrics: ServiceMetrics,
               authenticator: Authenticator | None = None) -> FastAPI:
    """The HTTP application serving ``core``: ``/v1/ask``, ``/v1/ask/stream``, ``/v1/segment``,
    ``/v1/chat/completions``, ``/v1/models``, ``/health/live``, ``/health/ready``, ``/metrics``; OpenAPI
    docs at ``/docs``. API keys (``authenticator``, default built from ``settings``) guard every route but
    the open ones. Starting and stopping the core's engines is the caller's job."""
    authenticator = authenticator or Authenticator.from_settings(settings)
    app = FastAPI(title=TITLE, version=_version(), description=DESCRIPTION, docs_url="/docs",
                  openapi_url="/openapi.json", redoc_url=None)
    app.state.core = core
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.started_at = time.time()
    install_error_handlers(app)
    for module in (ask, segment, openai_chat, models, health):
        app.include_router(module.router)
    # add_middleware puts the latest one outermost: request context wraps the key check and the body limit,
    # so a 401/403/413 they send is counted, logged and carries the request id; the key check comes before
    # the body limit, so an unauthenticated caller learns nothing about the limits.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(ApiKeyMiddleware, authenticator=authenticator)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    app.openapi = lambda: openapi_schema(app)  # type: ignore[method-assign]
    return app
