"""The standard ``grpc.health.v1.Health`` service, answering from the core's readiness.

The serving status is read from ``core.ready()`` on every Check and polled for Watch streams, so it needs no
background task and follows draining (``ready()`` turns false) without being told.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.core.api import ServiceCore

log = logging.getLogger("medclm.grpc.health")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class CoreHealthServicer(health_pb2_grpc.HealthServicer):
    """Health of the server ("") and of each named service: SERVING exactly when ``core.ready()``."""

    def __init__(self, core: ServiceCore, services: tuple[str, ...], watch_poll_s: float = 1.0):
        self.core = core
        self.services = frozenset(("",) + tuple(services))
        self.watch_poll_s = watch_poll_s

    def status(self, service: str) -> int:
        """The serving status of ``service`` now (SERVICE_UNKNOWN for a name this server does not serve)."""
        if service not in self.services:
            return SERVICE_UNKNOWN
        try:
            return SERVING if self.core.ready() else NOT_SERVING
        except Exception:  # a readiness probe that fails means not ready, never a failed health call
            log.exception("core.ready() failed")
            return NOT_SERVING

    async def Check(self, request, context):
        """Unary check; NOT_FOUND for an unknown service, as the health protocol asks."""
        status = self.status(request.service)
        if status == SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    def draining(self) -> bool:
        """The core is shutting down (a core without a ``draining`` flag never is)."""
        return bool(getattr(self.core, "draining", False))

    async def Watch(self, request, context):
        """The current status at once, then every change (polled every ``watch_poll_s`` seconds). Once the
        core drains, the stream sends NOT_SERVING and ends: an open Watch must not hold the server's
        shutdown for the whole grace period, and the watcher learns to go elsewhere."""
        last = None
        while True:
            status = self.status(request.service)
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if self.draining():
                return
            await asyncio.sleep(self.watch_poll_s)
