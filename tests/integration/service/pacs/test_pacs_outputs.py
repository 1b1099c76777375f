"""PACS-native results from the real service (vLLM + ONNX Runtime behind gRPC and HTTP): DICOM SEG and SR
read back with pydicom and highdicom, and a real Orthanc PACS as the DICOMweb source and destination."""

from __future__ import annotations

import base64
import io
import json

import grpc
import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from service.core.masks import decode_rle
from service.grpc.gen import medclm_pb2
from service.pacs.multipart import read_multipart_related
from service.pacs.sr import polyline_box
from tests.support.files import dicom_from_phantom

pytestmark = pytest.mark.timeout(600)
CT_SMALL = get_testdata_file("CT_small.dcm")


@pytest.fixture(scope="module")
def memorised_ct(memorised, medclm_dataset):
    """A CT case whose answer the test model knows (so its box is known), as a DICOM with its own UIDs."""
    record = next(r for r in memorised if r.modality == "ct" and "<box>" in r.target)
    return record, dicom_from_phantom(medclm_dataset, record, new_uids=True)


def ct_small() -> bytes:
    return open(CT_SMALL, "rb").read()


def image_body(data: bytes) -> dict:
    return {"data_base64": base64.b64encode(data).decode(), "media_type": "application/dicom"}


def parts_of(response: httpx.Response) -> list:
    return read_multipart_related(response.headers["content-type"], response.content)


def regions(sr) -> list[float]:
    """Every image region's box, flattened (x1, y1, x2, y2, x1, ...), in report order."""
    return [v for g in sr.content.get_planar_roi_measurement_groups() for v in polyline_box(g.roi.value)]


def flat(boxes) -> list[float]:
    return [float(v) for box in boxes for v in box]


def seg_masks(seg, source_uid: str) -> dict[str, np.ndarray]:
    """Segment label -> boolean mask of the SEG's frame for the source instance."""
    pixels = seg.get_pixels_by_source_instance([source_uid])[0]  # (rows, columns, segments)
    return {item.SegmentLabel: pixels[..., i].astype(bool) for i, item in enumerate(seg.SegmentSequence)}


# --- gRPC ---------------------------------------------------------------------------------------------------
def test_pydicom_ct_small_round_trips_through_both_outputs_over_grpc(stub):
    source = pydicom.dcmread(CT_SMALL)
    image = medclm_pb2.Image(data=ct_small(), media_type="application/dicom")
    reply = stub.Ask(medclm_pb2.AskRequest(image=image, question="Which organ contains the lesion?", max_tokens=160,
                                           output_formats=["json", "dicom-sr", "dicom-seg"]), timeout=120)
    masks = stub.Segment(medclm_pb2.SegmentRequest(image=image, mask_format=medclm_pb2.MASK_FORMAT_RLE), timeout=60)

    assert [o.format for o in reply.dicom_outputs] == ["dicom-sr", "dicom-seg"]
    sr = hd.sr.srread(io.BytesIO(reply.dicom_outputs[0].data))
    assert sr.SOPInstanceUID == reply.dicom_outputs[0].sop_instance_uid
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == source.SOPInstanceUID
    returned = [(f.box_px.x1, f.box_px.y1, f.box_px.x2, f.box_px.y2) for f in reply.findings]
    assert regions(sr) == pytest.approx(flat(returned), abs=1e-3)
    assert any(e.ManufacturerModelName == reply.model and f"weights {reply.fingerprint}" in e.SoftwareVersions
               for e in sr.ContributingEquipmentSequence)

    seg = hd.seg.segread(io.BytesIO(reply.dicom_outputs[1].data))
    assert seg.get_source_image_uids()[0][2] == source.SOPInstanceUID
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns) == (reply.height, reply.width)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [float(v) for v in source.PixelSpacing]
    position = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
    assert [float(v) for v in position] == [float(v) for v in source.ImagePositionPatient]
    by_label = seg_masks(seg, source.SOPInstanceUID)
    assert list(by_label) == [o.name for o in masks.organs] and masks.organs  # one segment per organ found
    for organ in masks.organs:  # the SEG holds exactly the masks Segment returns
        expected = decode_rle(list(organ.mask_rle), reply.width, reply.height).astype(bool)
        assert np.array_equal(by_label[organ.name], expected), organ.name


def test_grpc_refuses_dicom_outputs_for_a_png_and_an_unknown_dicomweb_instance(stub, orthanc, medclm_dataset,
                                                                                memorised):
    png = (medclm_dataset / memorised[0].image).read_bytes()
    with pytest.raises(grpc.RpcError) as refused:
        stub.Segment(medclm_pb2.SegmentRequest(image=medclm_pb2.Image(data=png, media_type="image/png"),
                                               output_formats=["dicom-seg"]), timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(refused.value.trailing_metadata())["error-field"] == "output_formats"
    missing = medclm_pb2.DicomWebReference(base_url=orthanc.dicomweb_url, study_instance_uid="1.2.3",
                                           series_instance_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5")
    with pytest.raises(grpc.RpcError) as absent:
        stub.Segment(medclm_pb2.SegmentRequest(image=medclm_pb2.Image(dicomweb=missing)), timeout=60)
    assert absent.value.code() == grpc.StatusCode.NOT_FOUND


# --- HTTP ---------------------------------------------------------------------------------------------------
def test_http_sr_regions_are_the_known_boxes_of_a_memorised_case(http, memorised_ct):
    record, dicom = memorised_ct
    reply = http.post("/v1/ask", json={"image": image_body(dicom), "question": record.question,
                                       "output_formats": ["json", "dicom-sr"]})
    assert reply.status_code == 200, reply.text
    root, sr_part = parts_of(reply)
    body = json.loads(root.data)
    assert body["text"] == record.target and body["findings"]
    sr = hd.sr.srread(io.BytesIO(sr_part.data))
    boxes = [tuple(f["box_px"][k] for k in ("x1", "y1", "x2", "y2")) for f in body["findings"]]
    assert regions(sr) == pytest.approx(flat(boxes), abs=1e-3)
    sites = [g.finding_sites[0].value.meaning.lower() for g in sr.content.get_planar_roi_measurement_groups()]
    assert sites == [f["organ"] for f in body["findings"]]
    assert body["dicom_outputs"][0]["sop_instance_uid"] == sr.SOPInstanceUID


def test_http_segment_returns_the_seg_alone_as_application_dicom(http):
    reply = http.post("/v1/segment", json={"image": image_body(ct_small()), "output_formats": ["dicom-seg"]})
    organs = http.post("/v1/segment", json={"image": image_body(ct_small())}).json()["organs"]
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/dicom"
    seg = hd.seg.segread(io.BytesIO(reply.content))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [o["name"] for o in organs]
    assert seg.SegmentSequence[0].SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Anatomical Structure"


def test_http_bad_pacs_input_is_a_clear_client_error(http, orthanc):
    ds = pydicom.dcmread(CT_SMALL)
    del ds.StudyInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    no_study = http.post("/v1/segment", json={"image": image_body(buffer.getvalue()), "output_formats": ["dicom-seg"]})
    assert no_study.status_code == 400 and "StudyInstanceUID" in no_study.json()["error"]["message"]
    unknown = {"base_url": orthanc.dicomweb_url, "study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.4",
               "sop_instance_uid": "1.2.3.4.5"}
    absent = http.post("/v1/ask", json={"question": "Is there a lesion?", "image": {"dicomweb": unknown}})
    assert absent.status_code == 404 and absent.json()["error"]["code"] == "NOT_FOUND"
    elsewhere = http.post("/v1/ask", json={"question": "q", "image": {"dicomweb": {
        **unknown, "base_url": "http://169.254.169.254/dicom-web"}}})
    assert elsewhere.status_code == 400 and elsewhere.json()["error"]["field"] == "image.dicomweb.base_url"


# --- DICOMweb with a real PACS --------------------------------------------------------------------------------
def test_a_study_in_orthanc_is_fetched_by_uid_and_its_seg_and_sr_are_stored_back(http, stub, orthanc, memorised_ct):
    record, dicom = memorised_ct
    orthanc.upload(dicom)
    source = pydicom.dcmread(io.BytesIO(dicom))
    reference = {"base_url": orthanc.dicomweb_url, "study_instance_uid": source.StudyInstanceUID,
                 "series_instance_uid": source.SeriesInstanceUID, "sop_instance_uid": source.SOPInstanceUID,
                 "store_results": True}

    reply = http.post("/v1/ask", json={"question": record.question, "image": {"dicomweb": reference},
                                       "output_formats": ["json", "dicom-sr", "dicom-seg"]})
    assert reply.status_code == 200, reply.text
    root, *dicom_parts = parts_of(reply)
    body = json.loads(root.data)
    assert body["text"] == record.target  # the fetched instance reached the model as the uploaded file did
    assert [o["stored"] for o in body["dicom_outputs"]] == [True, True]
    stored = {o["sop_instance_uid"] for o in body["dicom_outputs"]}
    assert stored <= orthanc.sop_instance_uids()
    studies = {pydicom.dcmread(io.BytesIO(p.data)).StudyInstanceUID for p in dicom_parts}
    assert studies == {source.StudyInstanceUID}  # the results join the source's study in the PACS

    grpc_reference = medclm_pb2.DicomWebReference(**reference)
    seg_reply = stub.Segment(medclm_pb2.SegmentRequest(image=medclm_pb2.Image(dicomweb=grpc_reference),
                                                       output_formats=["dicom-seg"]), timeout=60)
    (seg,) = seg_reply.dicom_outputs
    assert seg.stored and seg.sop_instance_uid in orthanc.sop_instance_uids()


def test_command_line_client_writes_the_derived_dicom_files(service, tmp_path):
    import subprocess
    import sys

    for transport, folder in ((["--grpc", service.grpc_address], tmp_path / "grpc"),
                              (["--http", service.http_url], tmp_path / "http")):
        done = subprocess.run([sys.executable, "-m", "service.client", "ask", CT_SMALL, "Is there a lesion?",
                               "--max-tokens", "64", "--dicom-out", str(folder), *transport],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        written = sorted(p.name.split("-")[1] for p in folder.glob("*.dcm"))
        assert written == ["seg", "sr"], done.stdout
        modalities = sorted(pydicom.dcmread(p).Modality for p in folder.glob("*.dcm"))
        assert modalities == ["SEG", "SR"]
