"""``create_server``: the MedCLM gRPC service, standard health checking and server reflection on one
``grpc.aio`` server. The servicer only decodes, calls the core and encodes (service.grpc.convert)."""

from __future__ import annotations

import contextlib

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.auth import Authenticator
from service.config import Settings
from service.core.api import ServiceCore
from service.grpc import convert
from service.grpc.auth import ApiKeyInterceptor
from service.grpc.gen import MEDCLM_SERVICE, medclm_pb2, medclm_pb2_grpc
from service.grpc.health import HEALTH_SERVICE, CoreHealthServicer
from service.grpc.interceptors import RpcScope, rpc_method
from service.metrics import ServiceMetrics


def _route(method: str) -> str:
    return f"/{MEDCLM_SERVICE}/{method}"


class MedClmServicer(medclm_pb2_grpc.MedCLMServicer):
    """``medclm.v1.MedCLM`` over a :class:`ServiceCore`."""

    def __init__(self, core: ServiceCore, metrics: ServiceMetrics):
        self.core = core
        self.metrics = metrics

    @rpc_method(_route("Ask"))
    async def Ask(self, request, context, scope: RpcScope):
        """One grounded answer."""
        _image_log_fields(scope, request)
        result = await self.core.ask(convert.ask_request_from_pb(request, scope.request_id, scope.deadline))
        return convert.ask_result_to_pb(result)

    @rpc_method(_route("AskStream"))
    async def AskStream(self, request, context, scope: RpcScope):
        """Deltas, then the final response. The core's iterator is closed whichever way the call ends, so a
        caller that cancels (or whose deadline passes) aborts the generation in the engine."""
        _image_log_fields(scope, request)
        core_request = convert.ask_request_from_pb(request, scope.request_id, scope.deadline)
        async with contextlib.aclosing(self.core.ask_stream(core_request)) as events:
            async for event in events:
                await context.write(convert.ask_event_to_pb(event))
                if event.result is not None:  # the final result is the last event by contract
                    break

    @rpc_method(_route("Segment"))
    async def Segment(self, request, context, scope: RpcScope):
        """Organ masks of one image."""
        _image_log_fields(scope, request)
        result = await self.core.segment(convert.segment_request_from_pb(request, scope.request_id, scope.deadline))
        return convert.segment_result_to_pb(result)

    @rpc_method(_route("ListModels"))
    async def ListModels(self, request, context, scope: RpcScope):
        """Every served model."""
        return medclm_pb2.ListModelsResponse(models=[convert.model_info_to_pb(m) for m in self.core.list_models()])


def _image_log_fields(scope: RpcScope, request) -> None:
    # Sizes and media types only: the image and question may hold patient data (service.logging).
    scope.log_fields.update(image_bytes=len(request.image.data), image_media_type=request.image.media_type,
                            model=request.model)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from ``tls_cert_file``/``tls_key_file`` (None without them); with
    ``tls_client_ca_file`` clients must present a certificate signed by that CA (mutual TLS)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials([(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
                                       root_certificates=client_ca, require_client_auth=client_ca is not None)


async def create_server(core: ServiceCore, settings: Settings, metrics: ServiceMetrics | None = None, *,
                        health_watch_poll_s: float = 1.0,
                        authenticator: Authenticator | None = None) -> tuple[grpc.aio.Server, int]:
    """A ``grpc.aio`` server (not yet started) bound to ``settings.host:settings.grpc_port`` serving
    ``medclm.v1.MedCLM``, ``grpc.health.v1.Health`` (following ``core.ready()``) and server reflection for
    both; returns it with the port actually bound (``grpc_port`` 0 picks a free one).

    Messages larger than ``settings.max_request_bytes`` either way are refused by grpc itself with
    RESOURCE_EXHAUSTED. API keys (``authenticator``, default built from ``settings``) guard every method but
    the open scopes; TLS / mutual TLS follow the ``tls_*`` settings. Raises RuntimeError when the address
    cannot be bound."""
    metrics = metrics or ServiceMetrics()
    authenticator = authenticator or Authenticator.from_settings(settings)
    limit = settings.max_request_bytes
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        # grpc enables SO_REUSEPORT by default, which would let a second service share a taken port silently.
        ("grpc.so_reuseport", 0),
    ], interceptors=[ApiKeyInterceptor(authenticator, metrics)] if authenticator.enabled else None)
    medclm_pb2_grpc.add_MedCLMServicer_to_server(MedClmServicer(core, metrics), server)
    health_pb2_grpc.add_HealthServicer_to_server(
        CoreHealthServicer(core, (MEDCLM_SERVICE,), watch_poll_s=health_watch_poll_s), server)
    reflection.enable_server_reflection((MEDCLM_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
    credentials = server_credentials(settings)
    address = _address(settings.host, settings.grpc_port)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:  # older grpc versions report a failed bind as port 0 instead of raising
        raise RuntimeError(f"cannot bind gRPC to {_address(settings.host, settings.grpc_port)}")
    return server, port
