"""Standard health checking follows the core's readiness; server reflection lists the services."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

TIMEOUT = 30
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def health(grpc_server):
    return health_pb2_grpc.HealthStub(grpc_server.channel())


@pytest.mark.parametrize("service", ["", "medclm.v1.MedCLM"])
def test_check_follows_readiness(health, fake_core, service):
    request = health_pb2.HealthCheckRequest(service=service)
    assert health.Check(request, timeout=TIMEOUT).status == SERVING
    fake_core.is_ready = False
    assert health.Check(request, timeout=TIMEOUT).status == NOT_SERVING
    fake_core.is_ready = True
    assert health.Check(request, timeout=TIMEOUT).status == SERVING


def test_check_of_an_unknown_service_is_not_found(health):
    with pytest.raises(grpc.RpcError) as raised:
        health.Check(health_pb2.HealthCheckRequest(service="other.Service"), timeout=TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_watch_reports_readiness_changes(health, fake_core):
    fake_core.is_ready = False
    stream = health.Watch(health_pb2.HealthCheckRequest(service="medclm.v1.MedCLM"), timeout=TIMEOUT)
    assert next(stream).status == NOT_SERVING
    fake_core.is_ready = True
    assert next(stream).status == SERVING
    stream.cancel()


def test_reflection_lists_and_describes_the_services(grpc_server):
    reflect = reflection_pb2_grpc.ServerReflectionStub(grpc_server.channel())
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="medclm.v1.MedCLM")]
    listed, described = list(reflect.ServerReflectionInfo(iter(requests), timeout=TIMEOUT))
    names = {s.name for s in listed.list_services_response.service}
    assert {"medclm.v1.MedCLM", "grpc.health.v1.Health"} <= names
    proto = descriptor_pb2.FileDescriptorProto.FromString(described.file_descriptor_response.file_descriptor_proto[0])
    assert proto.name == "medclm/v1/medclm.proto" and proto.package == "medclm.v1"
    assert [m.name for m in proto.service[0].method] == ["Ask", "AskStream", "Segment", "ListModels"]
