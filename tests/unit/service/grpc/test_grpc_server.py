"""The real grpc.aio server around a FakeCore, called through stubs generated from the proto."""

from __future__ import annotations

import io
import logging
import re
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from service.config import Settings
from service.core.masks import decode_rle
from service.grpc.gen import medclm_pb2 as pb

from tests.support.grpc_server import GrpcServerThread
from tests.unit.service.grpc.conftest import (CANNED_MODELS, DELTAS, MAX_REQUEST_BYTES, canned_ask_result,
                                              canned_labels)

TIMEOUT = 30  # generous per-call timeout so a broken server fails the test instead of hanging it


def full_ask_request() -> pb.AskRequest:
    return pb.AskRequest(
        image=pb.Image(data=b"\x89PNG fake bytes", media_type="image/png", frame=2, modality="ct"),
        question="Where is the lesion?", model="medclm_int8", precision="int8", brief=True, max_tokens=77,
        temperature=0.5, seed=1234567890123, verify_grounding=False, output_formats=["json"])


def test_ask_round_trips_every_field(stub, fake_core):
    response, call = stub.Ask.with_call(full_ask_request(), metadata=[("x-request-id", "req-123")], timeout=TIMEOUT)

    [seen] = fake_core.requests
    assert (seen.image.data, seen.image.media_type, seen.image.frame, seen.image.modality) == \
        (b"\x89PNG fake bytes", "image/png", 2, "ct")
    assert (seen.question, seen.model, seen.precision) == ("Where is the lesion?", "medclm_int8", "int8")
    assert (seen.reasoning, seen.max_tokens, seen.temperature, seen.seed, seen.verify_grounding) == \
        (False, 77, 0.5, 1234567890123, False)
    assert seen.request_id == "req-123"
    assert dict(call.initial_metadata())["x-request-id"] == "req-123"

    expected = canned_ask_result("req-123")
    assert (response.request_id, response.model, response.fingerprint, response.answer, response.text) == \
        (expected.request_id, expected.model, expected.fingerprint, expected.answer, expected.text)
    assert list(response.reasoning_steps) == expected.reasoning_steps
    assert [(f.label, f.organ, (f.box_px.x1, f.box_px.y1, f.box_px.x2, f.box_px.y2),
             (f.box_norm.x1, f.box_norm.y1, f.box_norm.x2, f.box_norm.y2)) for f in response.findings] == \
        [(f.label, f.organ, f.box_px, f.box_norm) for f in expected.findings]
    assert [(g.finding_index, g.claimed_organ, g.segmented_organ, g.overlap, g.claimed_overlap, g.consistent)
            for g in response.grounding] == \
        [(g.finding_index, g.claimed_organ, g.segmented_organ, g.overlap, g.claimed_overlap, g.consistent)
         for g in expected.grounding]
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (601, 42)
    t = response.timings
    assert (t.queue_ms, t.preprocess_ms, t.engine_ms, t.time_to_first_token_ms, t.grounding_ms, t.total_ms) == \
        (1.5, 2.25, 300.125, 20.0625, 4.5, 330.375)
    assert (response.finish_reason, response.modality, response.width, response.height) == ("stop", "ct", 512, 384)


def test_unset_options_reach_the_core_as_defaults_and_a_request_id_is_made(stub, fake_core):
    response, call = stub.Ask.with_call(pb.AskRequest(question="q"), timeout=TIMEOUT)
    [seen] = fake_core.requests
    assert (seen.reasoning, seen.max_tokens, seen.temperature, seen.seed, seen.verify_grounding) == \
        (True, 0, 0.0, None, True)
    assert re.fullmatch(r"[0-9a-f]{32}", seen.request_id)
    assert dict(call.initial_metadata())["x-request-id"] == seen.request_id == response.request_id


@pytest.mark.parametrize("sent, kept", [("x" * 500, "x" * 64), ("a b\\c/d.e_f-g", "abcd.e_f-g")])
def test_a_caller_request_id_is_cut_to_plain_characters(stub, fake_core, sent, kept):
    _, call = stub.Ask.with_call(pb.AskRequest(question="q"), metadata=[("x-request-id", sent)], timeout=TIMEOUT)
    assert fake_core.requests[0].request_id == kept == dict(call.initial_metadata())["x-request-id"]


def test_a_request_id_with_nothing_usable_is_replaced(stub, fake_core):
    stub.Ask(pb.AskRequest(question="q"), metadata=[("x-request-id", "!!! ???")], timeout=TIMEOUT)
    assert re.fullmatch(r"[0-9a-f]{32}", fake_core.requests[0].request_id)


def test_one_access_log_line_per_request_without_content(stub, caplog):
    with caplog.at_level(logging.INFO, logger="medclm.grpc"):
        stub.Ask(full_ask_request(), metadata=[("x-request-id", "log-1")], timeout=TIMEOUT)
    [line] = [r for r in caplog.records if r.name == "medclm.grpc" and r.getMessage() == "request"]
    assert (line.request_id, line.route, line.status, line.transport) == \
        ("log-1", "/medclm.v1.MedCLM/Ask", "OK", "grpc")
    assert (line.image_bytes, line.image_media_type, line.model) == (len(b"\x89PNG fake bytes"), "image/png",
                                                                     "medclm_int8")
    assert "lesion" not in str(vars(line))  # the question text never reaches the log


def test_ask_stream_yields_deltas_then_the_final_response(stub, fake_core):
    call = stub.AskStream(full_ask_request(), metadata=[("x-request-id", "stream-1")], timeout=TIMEOUT)
    events = list(call)
    assert [e.WhichOneof("event") for e in events] == ["delta"] * len(DELTAS) + ["result"]
    assert [e.delta for e in events[:-1]] == DELTAS
    assert events[-1].result.request_id == "stream-1" and events[-1].result.answer == "liver nodule"
    assert len(events[-1].result.findings) == 2
    assert dict(call.initial_metadata())["x-request-id"] == "stream-1"
    assert fake_core.stream_finished.is_set() and not fake_core.stream_closed_early.is_set()


def test_client_cancel_closes_the_core_stream(stub, fake_core):
    fake_core.hold_stream = True
    call = stub.AskStream(pb.AskRequest(question="q"), timeout=TIMEOUT)
    assert next(call).delta == DELTAS[0]
    call.cancel()
    assert fake_core.stream_closed_early.wait(TIMEOUT), "the core's iterator was not closed after the cancel"
    assert not fake_core.stream_finished.is_set()


@pytest.mark.parametrize("mask_format", [pb.MASK_FORMAT_PNG, pb.MASK_FORMAT_UNSPECIFIED])
def test_segment_with_png_masks(stub, fake_core, mask_format):
    response = stub.Segment(pb.SegmentRequest(image=pb.Image(data=b"dicom", media_type="application/dicom"),
                                              model="organ_seg_ct", precision="fp16", mask_format=mask_format),
                            timeout=TIMEOUT)
    [seen] = fake_core.requests
    assert (seen.image.media_type, seen.model, seen.precision, seen.mask_format) == \
        ("application/dicom", "organ_seg_ct", "fp16", "png")
    labels = canned_labels()
    assert (response.width, response.height, response.modality) == (32, 24, "ct")
    assert (response.pixel_spacing_mm.row_mm, response.pixel_spacing_mm.column_mm) == (0.75, 0.5)
    assert [o.label for o in response.organs] == [1, 2]
    for organ in response.organs:
        mask = np.array(Image.open(io.BytesIO(organ.mask_png))) == 255
        np.testing.assert_array_equal(mask, labels == organ.label)
        assert organ.pixel_count == mask.sum()
        assert organ.area_mm2 == pytest.approx(mask.sum() * 0.75 * 0.5, abs=0.01)  # the core rounds to 0.01 mm²
        rows, cols = np.nonzero(mask)
        assert (organ.box_px.x1, organ.box_px.y1, organ.box_px.x2, organ.box_px.y2) == \
            (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        assert len(organ.mask_rle) == 0
    assert (response.timings.engine_ms, response.timings.total_ms) == (2.0, 3.5)


def test_segment_with_rle_masks(stub, fake_core):
    response = stub.Segment(pb.SegmentRequest(mask_format=pb.MASK_FORMAT_RLE), timeout=TIMEOUT)
    assert fake_core.requests[0].mask_format == "rle"
    labels = canned_labels()
    for organ in response.organs:
        assert organ.mask_png == b""
        np.testing.assert_array_equal(decode_rle(list(organ.mask_rle), response.height, response.width),
                                      labels == organ.label)


def test_list_models(stub):
    response = stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT)
    assert [(m.name, m.kind, m.precision, list(m.modalities), m.fingerprint, m.ready, m.engine)
            for m in response.models] == \
        [(m.name, m.kind, m.precision, m.modalities, m.fingerprint, m.ready, m.engine) for m in CANNED_MODELS]


def test_deadline_reaches_the_core_on_its_monotonic_clock(stub, fake_core):
    before = time.monotonic()
    stub.Ask(pb.AskRequest(question="q"), timeout=TIMEOUT)
    after = time.monotonic()
    stub.Ask(pb.AskRequest(question="q"))
    with_deadline, without = fake_core.requests
    # grpc hands the server its deadline on the wall clock, so allow a little clock skew either way.
    assert before + TIMEOUT - 1 < with_deadline.deadline < after + TIMEOUT + 1
    assert without.deadline is None


def test_message_over_the_size_limit_is_refused_by_grpc(stub, fake_core):
    request = pb.AskRequest(question="q", image=pb.Image(data=b"\0" * (MAX_REQUEST_BYTES + 1)))
    with pytest.raises(grpc.RpcError) as raised:
        stub.Ask(request, timeout=TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert fake_core.requests == []


def test_metrics_count_by_route_and_code(stub, fake_core, metrics):
    from service.errors import ErrorCode, ServiceError

    stub.Ask(pb.AskRequest(question="q"), timeout=TIMEOUT)
    fake_core.error = ServiceError(ErrorCode.NOT_FOUND, "no such model", "model")
    with pytest.raises(grpc.RpcError):
        stub.Ask(pb.AskRequest(question="q"), timeout=TIMEOUT)
    value = metrics.registry.get_sample_value
    route = "/medclm.v1.MedCLM/Ask"
    assert value("medclm_requests_total", {"transport": "grpc", "route": route, "code": "OK"}) == 1
    assert value("medclm_requests_total", {"transport": "grpc", "route": route, "code": "NOT_FOUND"}) == 1
    assert value("medclm_request_latency_seconds_count", {"transport": "grpc", "route": route}) == 2
    assert value("medclm_in_flight_requests", {"transport": "grpc"}) == 0


def test_in_flight_gauge_counts_a_running_stream(stub, fake_core, metrics):
    fake_core.hold_stream = True
    call = stub.AskStream(pb.AskRequest(question="q"), timeout=TIMEOUT)
    next(call)
    assert metrics.registry.get_sample_value("medclm_in_flight_requests", {"transport": "grpc"}) == 1
    call.cancel()
    assert fake_core.stream_closed_early.wait(TIMEOUT)


def test_a_taken_port_is_an_error(grpc_server, fake_core):
    settings = Settings(host="127.0.0.1", grpc_port=grpc_server.port)
    with pytest.raises(RuntimeError):
        GrpcServerThread(fake_core, settings).start()
