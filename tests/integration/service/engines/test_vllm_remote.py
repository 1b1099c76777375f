"""The remote VQA engine against a real vLLM OpenAI-compatible server started from the exported checkpoint.

The server streams what transformers generates (and so what the in-process engine streams, see
test_vllm_local.py), an early close aborts the request on the server, and once the server is gone the
engine turns not-ready and refuses with UNAVAILABLE. Tests run in file order; the last one kills the server.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.engines.base import GenerationParams
from service.engines.vllm_remote import RemoteVllmEngine, openai_messages
from service.errors import ErrorCode, ServiceError
from tests.support.medclm_repository import checkpoint_of
from training.medclm.prompts import build_messages

STARTUP_TIMEOUT_S = 600.0  # imports, engine-core spawn and weight loading on a busy 2-core machine
LONG_GENERATION = 800  # tokens (~4 s here); the prompt (~170) and these fit the server's --max-model-len 1024
ABORT_ATTEMPTS = 5


@dataclass
class VllmServer:
    """A running ``vllm.entrypoints.openai.api_server`` subprocess."""

    url: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        """Terminate the server's process group (API server, engine core, workers); SIGKILL after 30 s."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def free_port() -> int:
    """A port the OS just handed out on 127.0.0.1 (vLLM's server cannot report a port it picked itself)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_health(server: VllmServer, timeout_s: float) -> None:
    """Return once ``GET /health`` answers 200; fail with the server log if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"vLLM server exited ({server.process.returncode}):\n{server.log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        try:
            server.process.wait(timeout=0.5)  # the pause between polls; returns early only if the server died
        except subprocess.TimeoutExpired:
            pass
    pytest.fail(f"vLLM server not healthy after {timeout_s:.0f} s:\n{server.log.read_text()[-4000:]}")


def server_environment() -> dict[str, str]:
    """This process' environment without the VLLM_* variables an in-process engine may have set, plus the
    CPU settings the server needs here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="0", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


@pytest.fixture(scope="module")
def vllm_server(medclm_repository, tmp_path_factory):
    """The real OpenAI-compatible vLLM server on the exported ``medclm`` checkpoint, killed at module end."""
    port = free_port()
    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(checkpoint_of(medclm_repository)), "--served-model-name", "medclm",
               "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--max-model-len", "1024",
               "--dtype", "float32"]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=server_environment(), stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # its own process group: stop() reaches every child
    server = VllmServer(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_for_health(server, STARTUP_TIMEOUT_S)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def runner():
    """The event loop every test of the module runs on (the engine's client and poller live on it)."""
    with asyncio.Runner() as loop_runner:
        yield loop_runner


@pytest.fixture(scope="module")
def engine(runner, vllm_server):
    """A started remote engine for the served model ``medclm``."""
    remote = RemoteVllmEngine(vllm_server.url, "medclm", health_interval_s=0.5)
    assert not remote.ready()
    runner.run(remote.start())
    yield remote
    runner.run(remote.close())


@pytest.fixture(scope="module")
def messages(medclm_sample):
    """The sample's chat messages, built as the service builds them."""
    return build_messages(medclm_sample.question, reasoning=medclm_sample.reasoning)


async def collect(stream):
    """Every chunk of a generation."""
    return [chunk async for chunk in stream]


def server_metric(server: VllmServer, name: str) -> float:
    """A Prometheus metric of the server (summed over its label sets)."""
    text = httpx.get(f"{server.url}/metrics", timeout=5.0).text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


async def wait_until_idle(server: VllmServer, timeout_s: float = 60.0) -> None:
    """Wait until the server reports no running or waiting request."""
    async with asyncio.timeout(timeout_s):
        while server_metric(server, "vllm:num_requests_running") + server_metric(server,
                                                                                 "vllm:num_requests_waiting"):
            await asyncio.sleep(0.1)


def test_messages_carry_the_image_as_a_data_url(messages, medclm_sample):
    converted = openai_messages(messages, medclm_sample.image)
    parts = converted[0]["content"]
    assert parts[0]["type"] == "image_url" and parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[1] == messages[0]["content"][1]  # the text part as it was
    assert messages[0]["content"][0] == {"type": "image"}  # the caller's messages are left alone


def test_remote_greedy_stream_matches_transformers(runner, engine, messages, medclm_sample, medclm_reference):
    assert engine.ready()
    params = GenerationParams(max_tokens=medclm_reference.max_tokens, temperature=0.0)
    chunks = runner.run(collect(engine.generate(messages, medclm_sample.image, params, "remote-greedy")))

    assert medclm_reference.completion_tokens >= 8
    assert len(chunks) > 2
    assert [c.finished for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert "".join(c.delta for c in chunks) == medclm_reference.text
    last = chunks[-1]
    assert last.completion_tokens == medclm_reference.completion_tokens
    assert last.prompt_tokens == medclm_reference.prompt_tokens
    assert last.finish_reason == medclm_reference.finish_reason


class EosIgnoringRemoteEngine(RemoteVllmEngine):
    """The real remote engine whose requests also carry vLLM's ``ignore_eos`` sampling extension, so a request
    runs to ``max_tokens``: a long, known length that an abort must cut short."""

    def _body(self, messages, image, params):
        return {**super()._body(messages, image, params), "ignore_eos": True}


async def close_after_first_chunk(engine, server, messages, image, params, request_id):
    """Open a generation, close it after its first chunk and wait until the server is idle; returns the first
    chunk, the seconds until it arrived, and how many tokens the server generated in all."""
    generated_before = server_metric(server, "vllm:generation_tokens_total")
    start = time.monotonic()
    stream = engine.generate(messages, image, params, request_id)
    first = await anext(stream)
    seconds_to_first = time.monotonic() - start
    await stream.aclose()
    await wait_until_idle(server)  # an un-aborted request would run here to its end
    return first, seconds_to_first, server_metric(server, "vllm:generation_tokens_total") - generated_before


def test_closing_the_stream_aborts_on_the_server(runner, vllm_server, messages, medclm_sample):
    params = GenerationParams(max_tokens=LONG_GENERATION)
    engine = EosIgnoringRemoteEngine(vllm_server.url, "medclm", health_interval_s=0.5)

    async def scenario():
        await engine.start()
        try:
            start = time.monotonic()
            full = await collect(engine.generate(messages, medclm_sample.image, params, "remote-run-through"))
            full_seconds = time.monotonic() - start
            await wait_until_idle(vllm_server)
            # With a model this small the server on two cores sometimes streams nothing until its generation is
            # (nearly) done, idle or not; then there is nothing left to abort. Such an attempt cannot tell, so
            # take the first attempt whose first chunk came in the generation's first half.
            for attempt in range(ABORT_ATTEMPTS):
                first, seconds_to_first, generated = await close_after_first_chunk(
                    engine, vllm_server, messages, medclm_sample.image, params, f"remote-closed-early-{attempt}")
                if seconds_to_first < full_seconds / 2:
                    break
            else:
                pytest.skip(f"in {ABORT_ATTEMPTS} attempts no first chunk came before half of the {full_seconds:.1f} s "
                            "generation: the server streamed too late for an abort to be seen")
            after = await collect(engine.generate(messages, medclm_sample.image, GenerationParams(max_tokens=4),
                                                  "remote-after-abort"))
            return full[-1], first, generated, after
        finally:
            await engine.close()

    full, first, generated, after = runner.run(scenario())
    assert full.completion_tokens == LONG_GENERATION and full.finish_reason == "length"
    assert not first.finished and first.delta
    # The closed request stopped before its end (here: after 1 to a few hundred of its 800 tokens).
    assert 1 <= generated < LONG_GENERATION
    assert after[-1].finished and after[-1].completion_tokens == 4  # the server still serves


def test_two_concurrent_requests_both_complete(runner, engine, messages, medclm_sample, medclm_reference):
    params = GenerationParams(max_tokens=medclm_reference.max_tokens, temperature=0.0)
    brief = build_messages(medclm_sample.question, reasoning=False)

    async def both():
        return await asyncio.gather(collect(engine.generate(messages, medclm_sample.image, params, "r-first")),
                                    collect(engine.generate(brief, medclm_sample.image, params, "r-second")))

    first, second = runner.run(both())
    assert first[-1].finished and second[-1].finished
    assert "".join(c.delta for c in first) == medclm_reference.text
    assert second[-1].prompt_tokens != first[-1].prompt_tokens


def test_a_model_the_server_does_not_serve(runner, vllm_server, messages, medclm_sample):
    other = RemoteVllmEngine(vllm_server.url, "medclm_int8")

    async def scenario():
        await other.start()
        try:
            ready = other.ready()
            with pytest.raises(ServiceError) as caught:
                await collect(other.generate(messages, medclm_sample.image, GenerationParams(max_tokens=4), "x"))
            return ready, caught.value
        finally:
            await other.close()

    ready, error = runner.run(scenario())
    assert not ready  # healthy server, but not serving this model
    assert error.code == ErrorCode.INVALID_ARGUMENT


def test_a_killed_server_makes_the_engine_unavailable(runner, engine, vllm_server, messages, medclm_sample):
    assert engine.ready()
    vllm_server.stop()
    assert not runner.run(engine.check_health())
    assert not engine.ready()
    with pytest.raises(ServiceError) as caught:
        runner.run(collect(engine.generate(messages, medclm_sample.image, GenerationParams(max_tokens=4), "gone")))
    assert caught.value.code == ErrorCode.UNAVAILABLE


def test_closed_engine_is_not_ready(runner, engine, messages, medclm_sample):
    runner.run(engine.close())
    assert not engine.ready()
    with pytest.raises(ServiceError) as caught:
        runner.run(collect(engine.generate(messages, medclm_sample.image, GenerationParams(max_tokens=4), "closed")))
    assert caught.value.code == ErrorCode.UNAVAILABLE
