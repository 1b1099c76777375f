"""The in-process vLLM engine (AsyncLLM) streams what transformers generates, aborts closed streams, serves
concurrent requests, and reports itself not ready once closed or once its engine core has died.

One engine for the module, started on a loop the module owns (``asyncio.Runner``): AsyncLLM binds its
output handler to the loop it first runs on, so every test drives the engine through the same runner.
The tests run in file order; the last ones take the engine down.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from service.engines.base import GenerationParams
from service.engines.vllm_local import LocalVllmEngine
from service.errors import ErrorCode, ServiceError
from training.medclm.prompts import build_messages

LONG_GENERATION = 512  # the service's max_tokens cap: far more than fits between two reads of the stream


@pytest.fixture(scope="module")
def runner():
    """The event loop every test of the module runs on."""
    with asyncio.Runner() as loop_runner:
        yield loop_runner


@pytest.fixture(scope="module")
def engine(runner, medclm_repository):
    """One started engine (one CPU thread), closed when the module ends."""
    served = LocalVllmEngine(medclm_repository, "medclm", threads=1, max_model_len=1024)
    assert not served.ready()  # not before start
    runner.run(served.start())
    yield served
    runner.run(served.close())


@pytest.fixture(scope="module")
def messages(medclm_sample):
    """The sample's chat messages, built as the service builds them."""
    return build_messages(medclm_sample.question, reasoning=medclm_sample.reasoning)


async def collect(stream):
    """Every chunk of a generation."""
    return [chunk async for chunk in stream]


def test_greedy_stream_matches_transformers(runner, engine, messages, medclm_sample, medclm_reference):
    params = GenerationParams(max_tokens=medclm_reference.max_tokens, temperature=0.0)
    chunks = runner.run(collect(engine.generate(messages, medclm_sample.image, params, "greedy")))

    assert medclm_reference.completion_tokens >= 8  # a real comparison, not an immediate EOS
    assert len(chunks) > 1  # streamed, not one final blob
    assert [c.finished for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert "".join(c.delta for c in chunks) == medclm_reference.text
    last = chunks[-1]
    assert last.completion_tokens == medclm_reference.completion_tokens
    assert last.prompt_tokens == medclm_reference.prompt_tokens
    assert last.finish_reason == medclm_reference.finish_reason
    counts = [c.completion_tokens for c in chunks]
    assert counts == sorted(counts) and counts[0] >= 1  # cumulative counts


def test_fingerprint_and_tokenizer_come_from_the_repository(engine, medclm_repository):
    import json

    from tests.support.medclm_repository import checkpoint_of

    meta = json.loads((checkpoint_of(medclm_repository) / "medclm.json").read_text())
    assert engine.fingerprint == meta["export"]["weights_sha256"][:16] and len(engine.fingerprint) == 16
    assert engine.tokenizer.chat_template and engine.name == "medclm"


def test_closing_the_stream_aborts_the_request(runner, engine, messages, medclm_sample):
    async def scenario():
        stream = engine.generate(messages, medclm_sample.image, GenerationParams(max_tokens=LONG_GENERATION),
                                 "closed-early")
        first = await anext(stream)
        in_flight = engine.running_requests()
        await stream.aclose()
        return first, in_flight, engine.running_requests()

    first, in_flight, after = runner.run(scenario())
    assert not first.finished and first.completion_tokens < LONG_GENERATION
    assert in_flight == 1
    assert after == 0
    # the engine still serves after the abort
    chunks = runner.run(collect(engine.generate(messages, medclm_sample.image, GenerationParams(max_tokens=4),
                                                "after-abort")))
    assert chunks[-1].finished and chunks[-1].completion_tokens == 4 and engine.running_requests() == 0


def test_abort_by_request_id_ends_the_stream(runner, engine, messages, medclm_sample):
    async def scenario():
        stream = engine.generate(messages, medclm_sample.image, GenerationParams(max_tokens=LONG_GENERATION),
                                 "aborted-by-id")
        chunks = [await anext(stream)]
        await engine.abort("aborted-by-id")
        chunks += [chunk async for chunk in stream]
        return chunks

    chunks = runner.run(scenario())
    assert chunks[-1].finished and chunks[-1].finish_reason == "abort"
    assert chunks[-1].completion_tokens < LONG_GENERATION
    assert engine.running_requests() == 0


def test_two_concurrent_requests_both_complete(runner, engine, messages, medclm_sample, medclm_reference):
    params = GenerationParams(max_tokens=medclm_reference.max_tokens, temperature=0.0)
    brief = build_messages(medclm_sample.question, reasoning=False)

    async def both():
        return await asyncio.gather(collect(engine.generate(messages, medclm_sample.image, params, "first")),
                                    collect(engine.generate(brief, medclm_sample.image, params, "second")))

    first, second = runner.run(both())
    for chunks in (first, second):
        assert chunks[-1].finished and chunks[-1].finish_reason in ("stop", "length")
        assert chunks[-1].completion_tokens >= 1
    assert "".join(c.delta for c in first) == medclm_reference.text  # batching does not change greedy output
    assert second[-1].prompt_tokens != first[-1].prompt_tokens  # a different prompt really was served
    assert engine.running_requests() == 0


def test_sampling_with_a_seed_is_reproducible(runner, engine, messages, medclm_sample):
    params = GenerationParams(max_tokens=16, temperature=1.0, seed=7)
    texts = [
        "".join(c.delta for c in runner.run(collect(engine.generate(messages, medclm_sample.image, params, f"s{i}"))))
        for i in range(2)]
    assert texts[0] == texts[1] and texts[0]


def test_a_prompt_beyond_the_context_is_invalid(runner, engine, medclm_sample):
    too_long = build_messages("where is the lesion? " * 400, reasoning=True)
    with pytest.raises(ServiceError) as caught:
        runner.run(collect(engine.generate(too_long, medclm_sample.image, GenerationParams(max_tokens=4), "long")))
    assert caught.value.code == ErrorCode.INVALID_ARGUMENT
    assert engine.ready() and engine.running_requests() == 0  # a bad request does not take the model down


def test_not_ready_before_start(medclm_repository, runner, messages, medclm_sample):
    unstarted = LocalVllmEngine(medclm_repository, "medclm", threads=1)
    assert not unstarted.ready() and unstarted.running_requests() == 0
    with pytest.raises(ServiceError) as caught:
        runner.run(collect(unstarted.generate(messages, medclm_sample.image, GenerationParams(max_tokens=4), "x")))
    assert caught.value.code == ErrorCode.UNAVAILABLE


def test_a_missing_model_cannot_start(tmp_path, runner):
    with pytest.raises(ServiceError) as caught:
        runner.run(LocalVllmEngine(tmp_path, "medclm").start())
    assert caught.value.code == ErrorCode.NOT_FOUND


def test_a_dead_engine_core_makes_the_engine_unavailable(runner, engine, messages, medclm_sample):
    processes = engine.engine.engine_core.resources.engine_manager.processes  # the core vLLM spawned for us
    assert engine.ready() and processes
    for process in processes:
        os.kill(process.pid, signal.SIGKILL)

    async def wait_until_not_ready(timeout_s: float = 60.0):
        async with asyncio.timeout(timeout_s):  # vLLM's monitor thread notices the exit within a second
            while engine.ready():
                await asyncio.sleep(0.05)

    runner.run(wait_until_not_ready())
    with pytest.raises(ServiceError) as caught:
        runner.run(collect(engine.generate(messages, medclm_sample.image, GenerationParams(max_tokens=4), "dead")))
    assert caught.value.code == ErrorCode.UNAVAILABLE


def test_closed_engine_is_not_ready(runner, engine, messages, medclm_sample):
    runner.run(engine.close())
    assert not engine.ready()
    with pytest.raises(ServiceError) as caught:
        runner.run(collect(engine.generate(messages, medclm_sample.image, GenerationParams(max_tokens=4), "closed")))
    assert caught.value.code == ErrorCode.UNAVAILABLE
