"""Every ServiceError code reaches the caller as the status of service.errors.GRPC_STATUS with the shared
error fields in the trailing metadata; anything else is INTERNAL "internal error", logged once."""

from __future__ import annotations

import logging

import grpc
import pytest

from service.errors import GRPC_STATUS, INTERNAL_MESSAGE, ErrorCode, ServiceError
from service.grpc.gen import medclm_pb2 as pb

from tests.unit.service.grpc.conftest import DELTAS

TIMEOUT = 30
RETRY_CODES = (ErrorCode.OVERLOADED, ErrorCode.UNAVAILABLE)


def expect_error(invoke) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        invoke()
    return raised.value


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_maps_to_its_status_and_metadata(stub, fake_core, code):
    retry_after = 2.5 if code in RETRY_CODES else None
    fake_core.error = ServiceError(code, f"{code.value} happened", field="image.data", retry_after=retry_after)
    error = expect_error(lambda: stub.Ask(pb.AskRequest(question="q"), metadata=[("x-request-id", "err-1")],
                                          timeout=TIMEOUT))
    assert error.code() == GRPC_STATUS[code]
    assert error.details() == f"{code.value} happened"
    trailing = dict(error.trailing_metadata())
    assert trailing["error-code"] == code.value
    assert trailing["request-id"] == "err-1"
    assert trailing["error-field"] == "image.data"
    assert trailing.get("retry-after") == ("3" if retry_after else None)  # whole seconds, rounded up
    assert dict(error.initial_metadata())["x-request-id"] == "err-1"


def test_error_without_field_sends_no_field(stub, fake_core):
    fake_core.error = ServiceError(ErrorCode.UNAVAILABLE, "not ready")
    trailing = dict(expect_error(lambda: stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT))
                    .trailing_metadata())
    assert "error-field" not in trailing and "retry-after" not in trailing and trailing["error-code"] == "UNAVAILABLE"


@pytest.mark.parametrize("call", ["Segment", "ListModels"])
def test_other_methods_map_errors_too(stub, fake_core, call):
    fake_core.error = ServiceError(ErrorCode.OVERLOADED, "queue full", retry_after=1.0)
    request = pb.SegmentRequest() if call == "Segment" else pb.ListModelsRequest()
    error = expect_error(lambda: getattr(stub, call)(request, timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(error.trailing_metadata())["retry-after"] == "1"


def test_stream_error_before_any_delta(stub, fake_core):
    fake_core.error = ServiceError(ErrorCode.INVALID_ARGUMENT, "question is empty", "question")
    error = expect_error(lambda: list(stub.AskStream(pb.AskRequest(), timeout=TIMEOUT)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(error.trailing_metadata())["error-field"] == "question"


def test_stream_error_after_deltas_ends_the_stream_with_the_status(stub, fake_core):
    fake_core.error = ServiceError(ErrorCode.DEADLINE_EXCEEDED, "too slow")
    fake_core.error_after_deltas = 2
    call = stub.AskStream(pb.AskRequest(question="q"), timeout=TIMEOUT)
    received = []
    error = expect_error(lambda: received.extend(e.delta for e in call))
    assert received == DELTAS[:2]
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and error.details() == "too slow"


def test_unknown_exception_is_internal_without_details_and_logged_once(stub, fake_core, caplog):
    fake_core.error = RuntimeError("secret detail at /srv/model/weights")
    with caplog.at_level(logging.ERROR):
        error = expect_error(lambda: stub.Ask(pb.AskRequest(question="q"), metadata=[("x-request-id", "boom-1")],
                                              timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == INTERNAL_MESSAGE
    trailing = dict(error.trailing_metadata())
    assert trailing["error-code"] == "INTERNAL" and trailing["request-id"] == "boom-1"
    assert not any("secret" in str(v) or "Traceback" in str(v) for v in trailing.values())
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 1
    assert "boom-1" in logged[0].getMessage() and logged[0].exc_info[0] is RuntimeError


def test_unknown_exception_in_a_stream_is_internal(stub, fake_core):
    fake_core.error = KeyError("engine state")
    fake_core.error_after_deltas = 1
    error = expect_error(lambda: list(stub.AskStream(pb.AskRequest(question="q"), timeout=TIMEOUT)))
    assert error.code() == grpc.StatusCode.INTERNAL and error.details() == INTERNAL_MESSAGE
