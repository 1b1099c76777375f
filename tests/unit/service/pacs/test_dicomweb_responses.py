"""Reading DICOMweb responses: the DICOM part of a WADO-RS multipart body, the failures of a STOW-RS answer,
and the STOW-RS request body read back by the standard library's MIME parser."""

from __future__ import annotations

import email.parser
import email.policy
import json
import os

import pytest

from service.errors import ErrorCode, ServiceError
from service.pacs.dicomweb import dicom_part_from_multipart, stow_failure_reasons
from service.pacs.multipart import Part, multipart_related

CONTENT_TYPE = 'multipart/related; type="application/dicom"; boundary=b0undary'


def fake_part10(payload: bytes) -> bytes:
    """Preamble + DICM prefix + arbitrary bytes: enough to pass the Part-10 sanity check."""
    return b"\0" * 128 + b"DICM" + payload


def multipart(*parts: tuple[str, bytes], boundary: str = "b0undary") -> bytes:
    body = b""
    for content_type, content in parts:
        body += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize("payload", [
    os.urandom(4096),
    b"\r\n--b0undar\r\n\r\r\n\n",  # line breaks and a near-boundary inside the data survive
    b"ends with CR\r",
    b"ends with CRLF\r\n",
])
def test_the_dicom_part_comes_back_byte_for_byte(payload):
    instance = fake_part10(payload)
    assert dicom_part_from_multipart(CONTENT_TYPE, multipart(("application/dicom", instance))) == instance


def test_parts_of_other_types_are_ignored():
    instance = fake_part10(b"pixels")
    body = multipart(("application/json", b"{}"), ("application/dicom; transfer-syntax=1.2.840.10008.1.2.1", instance))
    assert dicom_part_from_multipart(CONTENT_TYPE, body) == instance


@pytest.mark.parametrize("content_type, body, reason", [
    ("application/dicom+json", b"[]", "not multipart/related"),
    ("", b"", "not multipart/related"),
    (CONTENT_TYPE, multipart(("application/json", b"{}")), "0 application/dicom parts"),
    (CONTENT_TYPE, multipart(("application/dicom", fake_part10(b"a")), ("application/dicom", fake_part10(b"b"))),
     "2 application/dicom parts"),
    (CONTENT_TYPE, multipart(("application/dicom", b"not part 10")), "not a DICOM Part-10 file"),
])
def test_responses_without_one_dicom_instance_are_unavailable(content_type, body, reason):
    with pytest.raises(ServiceError) as caught:
        dicom_part_from_multipart(content_type, body)
    assert caught.value.code is ErrorCode.UNAVAILABLE
    assert reason in caught.value.message


def test_the_stow_request_body_parses_back_into_its_instances():
    instances = [fake_part10(os.urandom(1000)), fake_part10(b"second\r\n")]
    content_type, body = multipart_related([Part("application/dicom", i) for i in instances], "application/dicom")

    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["application/dicom"] * 2
    assert [part.get_payload(decode=True) for part in parts] == instances


def test_stow_failures_are_listed_with_their_reasons():
    answer = {
        "00081198": {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": ["1.2.3.4"]}, "00081197": {"vr": "US", "Value": [0x0110]}},
            {"00081155": {"vr": "UI", "Value": ["1.2.3.5"]}, "00081197": {"vr": "US", "Value": [0xA700]}},
            {"00081155": {"vr": "UI", "Value": ["1.2.3.6"]}},
        ]},
        "00081199": {"vr": "SQ"},
    }
    reasons = stow_failure_reasons(json.dumps(answer).encode())
    assert reasons == ["failure reason 0x0110 (processing failure)", "failure reason 0xA700 (out of resources)",
                       "no reason given"]
    assert not any("1.2.3" in reason for reason in reasons)


@pytest.mark.parametrize("body", [
    json.dumps({"00081198": {"vr": "SQ"}, "00081199": {"vr": "SQ", "Value": [{}]}}).encode(),  # Orthanc's success
    b"",
    b"<NativeDicomModel/>",
    b"[1, 2]",
    json.dumps({"00081198": {"vr": "SQ", "Value": "not a list"}}).encode(),
])
def test_no_failures_are_read_from_successes_or_unreadable_bodies(body):
    assert stow_failure_reasons(body) == []
