"""Admission, cancellation, deadlines, engine death and graceful shutdown against a real service whose vLLM
engine serves a MedCLM copy that never stops by itself (end-of-sequence token = ``<pad>``): every generation
runs to ``max_tokens`` unless the service stops it, so an abort is told apart from a natural end by the
service's own counters (``medclm_engine_aborts_total``, ``medclm_engine_running_requests``), never by timing.

One service for the module (1 running + 1 waiting VQA request admitted); the tests run in file order and
the last two take the engine down, then the whole process.
"""

from __future__ import annotations

import json
import signal
import socket
import threading

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.grpc.gen import medclm_pb2, medclm_pb2_grpc
from tests.integration.service.reliability.reliability_support import (ct_small, engine_core_processes, image_json,
                                                                       metric, never_stopping_repository, scrape,
                                                                       wait_until)
from tests.support.service_process import start_service

pytestmark = pytest.mark.timeout(900)

QUESTION = "Where is the lesion?"
LONG = 512  # the service's max_tokens cap: several seconds of generation on this CPU
CORRUPT_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40


@pytest.fixture(scope="module")
def long_service(medclm_repository, tmp_path_factory):
    repository = never_stopping_repository(medclm_repository, tmp_path_factory.mktemp("never_stopping")
                                           / "model_repository")
    service = start_service(["--model-repository", str(repository), "--segmenter-variants", "fp32",
                             "--vqa-max-running", "1", "--vqa-max-waiting", "1", "--vllm-threads", "1",
                             "--shutdown-grace-s", "120", "--recovery-max-backoff-s", "4"])
    yield service
    service.stop()


@pytest.fixture(scope="module")
def stub(long_service):
    with grpc.insecure_channel(long_service.grpc_address) as channel:
        yield medclm_pb2_grpc.MedCLMStub(channel)


def ask_body(max_tokens: int = LONG, image: bytes | None = None, media_type: str = "application/dicom") -> dict:
    return {"image": image_json(ct_small() if image is None else image, media_type), "question": QUESTION,
            "max_tokens": max_tokens, "verify_grounding": False}


def ask_pb(max_tokens: int = LONG, image: bytes | None = None, media_type: str = "application/dicom"):
    return medclm_pb2.AskRequest(image=medclm_pb2.Image(data=ct_small() if image is None else image,
                                                        media_type=media_type),
                                 question=QUESTION, max_tokens=max_tokens, verify_grounding=False)


class Engine:
    """The engine's state as the service's /metrics shows it."""

    def __init__(self, service):
        self.url = service.http_url

    def value(self, name: str, **labels) -> float:
        return metric(scrape(self.url), name, **labels)

    def running(self) -> float:
        return self.value("medclm_engine_running_requests", model="medclm")

    def aborts(self) -> float:
        return self.value("medclm_engine_aborts_total", model="medclm")

    def admitted(self, state: str) -> float:
        return self.value("medclm_admission_requests", gate="medclm", state=state)

    def wait_idle(self) -> None:
        wait_until(lambda: self.running() == 0 and self.admitted("running") == 0 and self.admitted("waiting") == 0,
                   "the engine to have no request")


@pytest.fixture
def engine(long_service):
    state = Engine(long_service)
    state.wait_idle()  # every test starts from an idle engine
    return state


def test_without_an_abort_a_generation_runs_to_max_tokens(stub, engine):
    """The premise of the abort tests: this model only ever stops at max_tokens."""
    reply = stub.Ask(ask_pb(max_tokens=40), timeout=120)
    assert reply.finish_reason == "length" and reply.usage.completion_tokens == 40
    assert engine.aborts() == 0


def test_overload_is_refused_before_the_image_is_decoded_on_both_transports(long_service, stub, engine):
    """With 1 running + 1 waiting admitted, a request with a corrupt image gets 429 / RESOURCE_EXHAUSTED, not
    400: admission comes before decoding."""
    running = stub.AskStream(ask_pb(), timeout=300)
    assert next(running).WhichOneof("event") == "delta"
    waiting = stub.AskStream(ask_pb(), timeout=300)
    wait_until(lambda: engine.admitted("waiting") == 1, "the second request to wait for a slot")
    try:
        reply = httpx.post(f"{long_service.http_url}/v1/ask", json=ask_body(image=CORRUPT_PNG, media_type="image/png"),
                           timeout=30)
        assert reply.status_code == 429 and reply.json()["error"]["code"] == "OVERLOADED"
        assert int(reply.headers["retry-after"]) >= 1
        with pytest.raises(grpc.RpcError) as refused:
            stub.Ask(ask_pb(image=CORRUPT_PNG, media_type="image/png"), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ("error-code", "OVERLOADED") in tuple(refused.value.trailing_metadata())
    finally:
        waiting.cancel()
        running.cancel()
    engine.wait_idle()
    assert engine.aborts() == 1  # the generating request was aborted; the waiting one never reached vLLM


def test_an_http_client_that_disconnects_mid_stream_aborts_the_generation(long_service, engine):
    before = engine.aborts()
    with httpx.Client(base_url=long_service.http_url, timeout=60) as client:
        with client.stream("POST", "/v1/ask/stream", json=ask_body()) as reply:
            assert reply.status_code == 200
            lines = reply.iter_lines()
            while next(lines) != "event: delta":
                pass
            assert engine.running() == 1
    # the connection is closed here, mid-generation
    wait_until(lambda: engine.running() == 0, "vLLM to drop the request")
    assert engine.aborts() == before + 1


def test_an_http_client_that_disconnects_before_the_answer_aborts_the_generation(long_service, engine):
    body = json.dumps(ask_body()).encode()
    before = engine.aborts()
    with socket.create_connection(("127.0.0.1", long_service.http_port), timeout=30) as sock:
        sock.sendall(b"POST /v1/ask HTTP/1.1\r\nHost: medclm\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        wait_until(lambda: engine.running() == 1, "the generation to start")
    wait_until(lambda: engine.running() == 0, "vLLM to drop the request")
    assert engine.aborts() == before + 1


def test_a_grpc_cancel_aborts_the_generation_for_streams_and_unary_calls(stub, engine):
    before = engine.aborts()
    stream = stub.AskStream(ask_pb(), timeout=300)
    assert next(stream).WhichOneof("event") == "delta"
    stream.cancel()
    wait_until(lambda: engine.running() == 0, "vLLM to drop the streamed request")
    assert engine.aborts() == before + 1

    unary = stub.Ask.future(ask_pb(), timeout=300)
    wait_until(lambda: engine.running() == 1, "the unary generation to start")
    unary.cancel()
    wait_until(lambda: engine.running() == 0, "vLLM to drop the unary request")
    assert engine.aborts() == before + 2


# Well inside a LONG generation: on an idle machine this micro model writes 512 tokens in about 1.2 s (a 1.5 s
# deadline was seen to pass after the answer), while decoding and admitting CT_small take milliseconds.
MID_GENERATION_DEADLINE_S = 0.6


def test_a_deadline_that_passes_during_generation_aborts_it_on_both_transports(long_service, stub, engine):
    before = engine.aborts()
    with pytest.raises(grpc.RpcError) as expired:
        stub.Ask(ask_pb(), timeout=MID_GENERATION_DEADLINE_S)
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: engine.running() == 0, "vLLM to drop the expired gRPC request")
    assert engine.aborts() == before + 1

    reply = httpx.post(f"{long_service.http_url}/v1/ask", json=ask_body(),
                       headers={"X-Request-Timeout": str(MID_GENERATION_DEADLINE_S)}, timeout=60)
    assert reply.status_code == 504 and reply.json()["error"]["code"] == "DEADLINE_EXCEEDED"
    wait_until(lambda: engine.running() == 0, "vLLM to drop the expired HTTP request")
    assert engine.aborts() == before + 2


def test_engine_core_death_gives_fast_unavailable_then_the_engine_restarts(long_service, stub, engine):
    url = long_service.http_url
    cores = engine_core_processes(long_service.process.pid)
    assert cores, "no vLLM engine-core process under the service"
    for core in cores:
        core.kill()
    wait_until(lambda: httpx.get(f"{url}/health/ready", timeout=10).status_code == 503, "readiness to fail")

    reply = httpx.post(f"{url}/v1/ask", json=ask_body(max_tokens=8), timeout=10)  # a hang would time out
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "UNAVAILABLE"
    assert int(reply.headers["retry-after"]) >= 1
    with pytest.raises(grpc.RpcError) as down:
        stub.Ask(ask_pb(max_tokens=8), timeout=10)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert long_service.process.poll() is None  # the service itself stays up

    wait_until(lambda: httpx.get(f"{url}/health/ready", timeout=10).status_code == 200,
               "the supervisor to restart the engine", timeout_s=300)
    reply = httpx.post(f"{url}/v1/ask", json=ask_body(max_tokens=8), timeout=120)
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 8
    assert engine.value("medclm_engine_restarts_total", model="medclm") == 1
    new_cores = engine_core_processes(long_service.process.pid)
    assert new_cores and {c.pid for c in new_cores}.isdisjoint({c.pid for c in cores})


def test_sigterm_drains_accepted_requests_then_exits_zero(long_service, stub, engine):
    """SIGTERM while one request generates (HTTP stream) and one waits for its slot (gRPC stream): readiness
    fails, new requests get UNAVAILABLE, a health Watch ends, both accepted requests finish, exit code 0."""
    url = long_service.http_url
    channel = grpc.insecure_channel(long_service.grpc_address)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=300)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    outcomes: dict[str, object] = {}

    def http_stream():
        with httpx.stream("POST", f"{url}/v1/ask/stream", json=ask_body(max_tokens=200), timeout=300) as reply:
            outcomes["http"] = [line for line in reply.iter_lines() if line.startswith("event: ")]

    def grpc_stream():
        outcomes["grpc"] = list(stub.AskStream(ask_pb(max_tokens=200), timeout=300))

    first = threading.Thread(target=http_stream)
    first.start()
    wait_until(lambda: engine.running() == 1, "the HTTP stream to generate")
    second = threading.Thread(target=grpc_stream)
    second.start()
    wait_until(lambda: engine.admitted("waiting") == 1, "the gRPC stream to wait for its slot")

    long_service.process.send_signal(signal.SIGTERM)
    wait_until(lambda: httpx.get(f"{url}/health/ready", timeout=10).status_code == 503, "readiness to fail")
    refused = httpx.post(f"{url}/v1/ask", json=ask_body(max_tokens=8), timeout=30)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "UNAVAILABLE"
    with pytest.raises(grpc.RpcError) as refused_rpc:
        stub.Ask(ask_pb(max_tokens=8), timeout=30)
    assert refused_rpc.value.code() == grpc.StatusCode.UNAVAILABLE
    statuses = [update.status for update in watch]  # the Watch stream ends instead of holding the shutdown
    assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
    channel.close()

    first.join(300)
    second.join(300)
    assert outcomes["http"][-2:] == ["event: result", "event: done"]
    final = outcomes["grpc"][-1]
    assert final.WhichOneof("event") == "result" and final.result.usage.completion_tokens == 200
    assert long_service.process.wait(300) == 0
