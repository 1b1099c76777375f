"""How /v1/ask and /v1/segment carry DICOM outputs over HTTP (fake core: the DICOM objects are stand-in bytes;
the real objects are checked in tests/unit/service/pacs and tests/integration/service/pacs)."""

from __future__ import annotations

import json

from service.pacs.dicomweb import DicomWebReference
from service.pacs.multipart import read_multipart_related
from tests.unit.service.http.fake_core import ask_json

DICOMWEB = {"base_url": "http://127.0.0.1:8042/dicom-web", "study_instance_uid": "1.2",
            "series_instance_uid": "1.2.3", "sop_instance_uid": "1.2.3.4"}


def parts_of(response) -> list:
    return read_multipart_related(response.headers["content-type"], response.content)


def test_json_plus_dicom_is_multipart_related_with_the_json_root_first(client):
    response = client.post("/v1/ask", json=ask_json(output_formats=["json", "dicom-sr", "dicom-seg"]))

    assert response.status_code == 200, response.text
    assert 'type="application/json"' in response.headers["content-type"]
    root, sr, seg = parts_of(response)
    body = json.loads(root.data)
    assert body["answer"] == "a liver nodule."
    assert [o["format"] for o in body["dicom_outputs"]] == ["dicom-sr", "dicom-seg"]
    assert [(p.media_type, p.headers["Content-Description"], p.data) for p in (sr, seg)] == [
        ("application/dicom", "dicom-sr", b"fake dicom-sr object"),
        ("application/dicom", "dicom-seg", b"fake dicom-seg object")]
    assert body["dicom_outputs"][0]["size_bytes"] == len(b"fake dicom-sr object")


def test_one_dicom_object_alone_is_the_body(client):
    response = client.post("/v1/segment", json={"image": ask_json()["image"], "output_formats": ["dicom-seg"]})

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    assert response.content == b"fake dicom-seg object"
    assert response.headers["content-description"] == "dicom-seg"


def test_several_dicom_objects_without_json_are_dicomweb_style_multipart(client):
    response = client.post("/v1/ask", json=ask_json(output_formats=["dicom-seg", "dicom-sr"]))

    assert 'type="application/dicom"' in response.headers["content-type"]
    assert [p.headers["Content-Description"] for p in parts_of(response)] == ["dicom-seg", "dicom-sr"]


def test_json_only_stays_a_json_body(client):
    response = client.post("/v1/ask", json=ask_json())
    assert response.headers["content-type"] == "application/json" and response.json()["dicom_outputs"] == []


def test_the_event_stream_refuses_dicom_outputs(client, fake_core):
    response = client.post("/v1/ask/stream", json=ask_json(output_formats=["dicom-sr"]))
    assert response.status_code == 400 and response.json()["error"]["field"] == "output_formats"
    assert fake_core.asks == []


def test_a_dicomweb_reference_reaches_the_core_and_needs_no_bytes(client, fake_core):
    response = client.post("/v1/ask", json={"question": "q", "image": {"dicomweb": {**DICOMWEB, "store_results": True}},
                                            "output_formats": ["json", "dicom-sr"]})
    assert response.status_code == 200, response.text
    (request,) = fake_core.asks
    assert request.image.dicomweb == DicomWebReference(**DICOMWEB, store_results=True)
    assert request.image.media_type == "application/dicom" and request.output_formats == ("json", "dicom-sr")


def test_an_image_needs_exactly_one_of_bytes_and_reference(client, fake_core):
    both = client.post("/v1/ask", json={"question": "q", "image": {**ask_json()["image"], "dicomweb": DICOMWEB}})
    neither = client.post("/v1/ask", json={"question": "q", "image": {"frame": 0}})
    assert (both.status_code, neither.status_code) == (400, 400)
    assert both.json()["error"]["field"] == neither.json()["error"]["field"] == "image.data_base64"
    assert fake_core.asks == []
