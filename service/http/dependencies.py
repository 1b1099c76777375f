"""What routes take from the application: the core, the settings and the request id."""

from __future__ import annotations

from fastapi import Request

from service.config import Settings
from service.core.api import ServiceCore


def core_of(request: Request) -> ServiceCore:
    """The :class:`ServiceCore` the app was created with."""
    return request.app.state.core


def settings_of(request: Request) -> Settings:
    """The :class:`Settings` the app was created with."""
    return request.app.state.settings


def request_id(request: Request) -> str:
    """The id the request-context middleware assigned (caller's ``X-Request-ID`` or a fresh one)."""
    return request.state.request_id
