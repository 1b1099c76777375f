"""API keys on every route of both transports, HTTPS and gRPC over TLS, and mutual TLS, against real services
(without a VQA model: the tests are about the front doors). Certificates are made here with ``cryptography``.

The keyed service takes one key from ``MEDCLM_API_KEYS`` (every scope) and one from ``MEDCLM_API_KEYS_FILE``
restricted to Segment (``KEY:segment``); health and metrics are the open routes (the default).
"""

from __future__ import annotations

import ssl

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from openai import AuthenticationError, OpenAI

from service.grpc.gen import medclm_pb2, medclm_pb2_grpc
from tests.integration.service.reliability.reliability_support import (ct_small, image_json, make_certificates,
                                                                       metric, segment_only_args,
                                                                       segmenter_repository, wait_until)
from tests.support.service_process import start_service

pytestmark = pytest.mark.timeout(600)

FULL_KEY = "mk-full-3b6f0c8e2d9a4f17a5c1e0b7d4c2f9e8"
SEGMENT_KEY = "mk-seg-91d2c7a04e5b4f3c8a6d1e2f7b0c9d35"
WRONG_KEY = "mk-full-3b6f0c8e2d9a4f17a5c1e0b7d4c2f9e9"  # one character off


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def start_tls_service(args: list[str], env: dict, verify: ssl.SSLContext):
    service = start_service(args, env=env, ready=False)
    url = f"https://127.0.0.1:{service.http_port}"
    wait_until(lambda: _ready(url, verify), "the HTTPS service to be ready", timeout_s=120)
    return service, url


def _ready(url: str, verify) -> bool:
    try:
        return httpx.get(f"{url}/health/ready", verify=verify, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certificates"))


def client_context(certificates, cert=None, key=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificates.ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    return segmenter_repository(tmp_path_factory.mktemp("auth") / "model_repository")


@pytest.fixture(scope="module")
def keyed(repository, certificates, tmp_path_factory):
    """HTTPS + gRPC/TLS with API keys."""
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text(f"# PACS gateway: segmentation only\n{SEGMENT_KEY}:segment\n")
    env = {"MEDCLM_API_KEYS": FULL_KEY, "MEDCLM_API_KEYS_FILE": str(keys_file)}
    service, url = start_tls_service(segment_only_args(repository, "--tls-cert-file", str(certificates.server_cert),
                                                       "--tls-key-file", str(certificates.server_key)),
                                     env, client_context(certificates))
    yield service, url
    service.stop()


@pytest.fixture(scope="module")
def http(keyed, certificates):
    _, url = keyed
    with httpx.Client(base_url=url, verify=client_context(certificates), timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def channel(keyed, certificates):
    service, _ = keyed
    credentials = grpc.ssl_channel_credentials(root_certificates=certificates.ca.read_bytes())
    with grpc.secure_channel(service.grpc_address, credentials) as secure:
        yield secure


SEGMENT_BODY = {"image": image_json(ct_small(), "application/dicom"), "mask_format": "rle"}
ASK_BODY = {"image": image_json(ct_small(), "application/dicom"), "question": "Any lesion?"}
GUARDED_HTTP = [("GET", "/v1/models", None), ("GET", "/v1/models/organ_seg_ct", None),
                ("POST", "/v1/segment", SEGMENT_BODY), ("POST", "/v1/ask", ASK_BODY),
                ("POST", "/v1/ask/stream", ASK_BODY), ("POST", "/v1/chat/completions", {"messages": []}),
                ("GET", "/docs", None), ("GET", "/openapi.json", None), ("GET", "/no/such/route", None)]


@pytest.mark.parametrize("method, path, body", GUARDED_HTTP, ids=[p for _, p, _ in GUARDED_HTTP])
def test_every_http_route_but_the_open_ones_needs_a_valid_key(http, method, path, body):
    for headers in ({}, bearer(WRONG_KEY), {"Authorization": f"Basic {FULL_KEY}"}, {"Authorization": "Bearer"}):
        reply = http.request(method, path, json=body, headers=headers)
        assert reply.status_code == 401, (headers, reply.text)
        assert reply.json()["error"]["code"] == "UNAUTHENTICATED"
        assert reply.headers["www-authenticate"].startswith("Bearer")
    allowed = http.request(method, path, json=body, headers=bearer(FULL_KEY))
    assert allowed.status_code not in (401, 403), allowed.text


@pytest.mark.parametrize("path", ["/health/live", "/health/ready", "/metrics"])
def test_health_and_metrics_are_open_by_configuration(http, path):
    assert http.get(path).status_code == 200


def test_a_key_restricted_to_segment_may_only_segment_over_http(http):
    assert http.post("/v1/segment", json=SEGMENT_BODY, headers=bearer(SEGMENT_KEY)).status_code == 200
    for method, path, body in [("GET", "/v1/models", None), ("POST", "/v1/ask", ASK_BODY),
                               ("POST", "/v1/chat/completions", {"messages": []}), ("GET", "/openapi.json", None)]:
        reply = http.request(method, path, json=body, headers=bearer(SEGMENT_KEY))
        assert reply.status_code == 403 and reply.json()["error"]["code"] == "PERMISSION_DENIED", path


def test_the_openai_client_authenticates_with_its_api_key(keyed, certificates):
    _, url = keyed
    with httpx.Client(verify=client_context(certificates)) as transport:
        allowed = OpenAI(base_url=f"{url}/v1", api_key=FULL_KEY, http_client=transport, max_retries=0)
        assert {m.id for m in allowed.models.list()} >= {"organ_seg_ct", "organ_seg_cxr"}
        refused = OpenAI(base_url=f"{url}/v1", api_key=WRONG_KEY, http_client=transport, max_retries=0)
        with pytest.raises(AuthenticationError):
            refused.models.list()


def grpc_calls(channel):
    """Each guarded gRPC method as a callable taking the call's metadata."""
    stub = medclm_pb2_grpc.MedCLMStub(channel)
    image = medclm_pb2.Image(data=ct_small(), media_type="application/dicom")
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    return {
        "ListModels": lambda md: stub.ListModels(medclm_pb2.ListModelsRequest(), metadata=md, timeout=30),
        "Segment": lambda md: stub.Segment(medclm_pb2.SegmentRequest(image=image), metadata=md, timeout=30),
        "Ask": lambda md: stub.Ask(medclm_pb2.AskRequest(image=image, question="Any lesion?"), metadata=md,
                                   timeout=30),
        "AskStream": lambda md: list(stub.AskStream(medclm_pb2.AskRequest(image=image, question="Any lesion?"),
                                                    metadata=md, timeout=30)),
        "Reflection": lambda md: list(reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=md, timeout=30)),
    }


def grpc_code(call, metadata) -> grpc.StatusCode:
    try:
        call(metadata)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_every_grpc_method_needs_a_valid_key_and_scoped_keys_are_held_to_their_scope(channel):
    calls = grpc_calls(channel)
    for name, call in calls.items():
        for metadata in ((), (("authorization", f"Bearer {WRONG_KEY}"),), (("authorization", FULL_KEY),)):
            assert grpc_code(call, metadata) == grpc.StatusCode.UNAUTHENTICATED, (name, metadata)
        assert grpc_code(call, (("authorization", f"Bearer {FULL_KEY}"),)) not in (
            grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), name
        scoped = grpc_code(call, (("authorization", f"Bearer {SEGMENT_KEY}"),))
        assert scoped == (grpc.StatusCode.OK if name == "Segment" else grpc.StatusCode.PERMISSION_DENIED), name
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert health.status == health_pb2.HealthCheckResponse.SERVING  # open without a key


def test_keys_are_never_logged_and_refusals_are_counted(keyed, http):
    service, _ = keyed
    http.get("/v1/models", headers=bearer(WRONG_KEY))
    logs = "".join(service.log_lines)
    for key in (FULL_KEY, SEGMENT_KEY, WRONG_KEY):
        assert key not in logs and key[-12:] not in logs
    assert '"status": 401' in logs and '"status": "UNAUTHENTICATED"' in logs
    metrics = http.get("/metrics").text
    assert metric(metrics, "medclm_requests_total", transport="http", route="/v1/models", code="401") >= 1
    assert metric(metrics, "medclm_requests_total", transport="grpc", route="/medclm.v1.MedCLM/Segment",
                  code="UNAUTHENTICATED") >= 1


def test_plain_connections_to_tls_ports_are_refused(keyed):
    service, _ = keyed
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{service.http_port}/health/live", timeout=10)
    with grpc.insecure_channel(service.grpc_address) as plain:
        with pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


# --- mutual TLS -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mutual(repository, certificates):
    """HTTPS + gRPC/TLS requiring a client certificate from the test CA (no API keys)."""
    context = client_context(certificates, certificates.client_cert, certificates.client_key)
    service, url = start_tls_service(segment_only_args(repository, "--tls-cert-file", str(certificates.server_cert),
                                                       "--tls-key-file", str(certificates.server_key),
                                                       "--tls-client-ca-file", str(certificates.ca)), {}, context)
    yield service, url
    service.stop()


def test_mutual_tls_over_https_needs_a_client_certificate_from_the_trusted_ca(mutual, certificates):
    _, url = mutual
    trusted = client_context(certificates, certificates.client_cert, certificates.client_key)
    assert httpx.get(f"{url}/v1/models", verify=trusted, timeout=10).status_code == 200
    for context in (client_context(certificates),
                    client_context(certificates, certificates.other_client_cert, certificates.other_client_key)):
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/v1/models", verify=context, timeout=10)


def test_mutual_tls_over_grpc_needs_a_client_certificate_from_the_trusted_ca(mutual, certificates):
    service, _ = mutual

    def list_models(**credentials) -> grpc.StatusCode:
        channel_credentials = grpc.ssl_channel_credentials(root_certificates=certificates.ca.read_bytes(),
                                                           **credentials)
        with grpc.secure_channel(service.grpc_address, channel_credentials) as secure:
            return grpc_code(grpc_calls(secure)["ListModels"], ())

    assert list_models(private_key=certificates.client_key.read_bytes(),
                       certificate_chain=certificates.client_cert.read_bytes()) == grpc.StatusCode.OK
    assert list_models() == grpc.StatusCode.UNAVAILABLE
    assert list_models(private_key=certificates.other_client_key.read_bytes(),
                       certificate_chain=certificates.other_client_cert.read_bytes()) == grpc.StatusCode.UNAVAILABLE
