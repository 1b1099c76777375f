"""No patient data in the logs or metrics by default: DICOM requests with identifying header fields and a
question naming something unique go through every route of both transports of the shared real service (good
requests and refused ones); afterwards neither the captured JSON logs nor /metrics contain the patient's
name, id, birth date, study UID, the question or a piece of the pixel data. The study is logged only as a
salted hash."""

from __future__ import annotations

import base64
import io
import json
import re

import grpc
import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file

from service.grpc.gen import medclm_pb2, medclm_pb2_grpc
from tests.integration.service.reliability.reliability_support import image_json

pytestmark = pytest.mark.timeout(600)

PATIENT = {"PatientName": "Kowalczyk^Henrietta^Maria", "PatientID": "PID-88317-QX", "PatientBirthDate": "19470923",
           "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.77123456789012345",
           "AccessionNumber": "ACC-55120-KL", "InstitutionName": "St. Brigid Radiology"}
QUESTION = "Is the lesion next to the Fenwick-5521 stent of this patient?"


def identifiable_dicom(truncate_pixels: bool = False) -> bytes:
    """pydicom's CT_small with the identifying fields above (optionally with half its pixel data)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    if truncate_pixels:
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def secrets_of_the_request() -> list[str]:
    """Strings that must never reach logs or metrics: header values (also the way DICOM/pydicom print a
    person name), the question, and pieces of the pixel data as they travel (base64) and as stored (hex)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    pixels = ds.PixelData[4096:4096 + 48]
    encoded = base64.b64encode(identifiable_dicom()).decode()
    middle = len(encoded) // 2
    values = list(PATIENT.values()) + ["Kowalczyk", "Henrietta", "PID-88317", "1947-09-23", "Fenwick-5521",
                                       "CompressedSamples^CT1", pixels.hex(), encoded[middle:middle + 40]]
    return values


def test_dicom_requests_leave_no_patient_data_in_logs_or_metrics(service):
    good, broken = identifiable_dicom(), identifiable_dicom(truncate_pixels=True)
    url = service.http_url
    first_line = len(service.log_lines)  # the shared service also logged earlier tests (fuzzed DICOMs among them)
    with httpx.Client(base_url=url, timeout=120) as http:
        for data, expected in ((good, 200), (broken, 400)):
            image = image_json(data, "application/dicom")
            ask = {"image": image, "question": QUESTION, "max_tokens": 16}
            replies = [http.post("/v1/ask", json=ask), http.post("/v1/segment", json={"image": image})]
            with http.stream("POST", "/v1/ask/stream", json=ask) as streamed:
                streamed.read()
                replies.append(streamed)
            replies.append(http.post("/v1/ask", files={"image": ("study.dcm", data, "application/dicom")},
                                     data={"question": QUESTION, "max_tokens": "16"}))
            assert [r.status_code for r in replies] == [expected] * 4, [r.text for r in replies]
            if expected != 200:
                for reply in replies:  # error bodies do not echo the header or the question either
                    assert not any(s in reply.text for s in secrets_of_the_request())
        refused = http.post("/v1/ask", json={"image": image_json(good, "application/dicom"),
                                              "question": QUESTION + "\x07"})
        assert refused.status_code == 400 and "Fenwick" not in refused.text

    with grpc.insecure_channel(service.grpc_address) as channel:
        stub = medclm_pb2_grpc.MedCLMStub(channel)
        for data in (good, broken):
            image = medclm_pb2.Image(data=data, media_type="application/dicom")
            request = medclm_pb2.AskRequest(image=image, question=QUESTION, max_tokens=16)
            for call in (lambda: stub.Ask(request, timeout=120), lambda: list(stub.AskStream(request, timeout=120)),
                         lambda: stub.Segment(medclm_pb2.SegmentRequest(image=image), timeout=120)):
                try:
                    call()
                except grpc.RpcError as error:
                    assert data is broken and error.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert not any(s in (error.details() or "") for s in secrets_of_the_request())

    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    logs = "".join(service.log_lines)
    for secret in secrets_of_the_request():
        assert secret not in logs, f"{secret!r} is in the logs"
        assert secret not in metrics, f"{secret!r} is in the metrics"

    # The access lines of these requests link the study through a hash only: one study, one hash.
    access = [json.loads(line) for line in service.log_lines[first_line:]
              if line.startswith("{") and '"study_hash"' in line]
    hashes = {entry["study_hash"] for entry in access}
    assert len(access) >= 7 and len(hashes) == 1
    assert all(re.fullmatch(r"[0-9a-f]{16}", h) for h in hashes)
    assert {entry.get("modality") for entry in access} == {"ct"}
