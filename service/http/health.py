"""Probes and scraping: ``/health/live``, ``/health/ready`` and ``/metrics`` (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.http.dependencies import core_of

router = APIRouter(tags=["operations"])


@router.get("/health/live", summary="Liveness: 200 while the process runs")
async def live(request: Request) -> JSONResponse:
    """200 ``{"status": "live"}`` while the process serves (503 if the core says it is not alive)."""
    alive = core_of(request).live()
    return JSONResponse({"status": "live" if alive else "not live"}, status_code=200 if alive else 503)


@router.get("/health/ready", summary="Readiness: 200 when every engine can serve, else 503")
async def ready(request: Request) -> JSONResponse:
    """200 ``{"status": "ready"}`` when the core is ready, 503 ``{"status": "not ready"}`` otherwise
    (loading, an engine down, draining)."""
    is_ready = core_of(request).ready()
    return JSONResponse({"status": "ready" if is_ready else "not ready"}, status_code=200 if is_ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """The service's Prometheus registry in the text exposition format."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
