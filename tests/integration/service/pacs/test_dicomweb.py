"""DicomWebAccess against a real Orthanc: WADO-RS retrieval, STOW-RS storage, and the errors callers see."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from service.errors import ErrorCode, ServiceError
from service.pacs.dicomweb import DicomWebAccess, DicomWebReference
from tests.support.orthanc import free_ports

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
ALLOWED_HOSTS = ("127.0.0.1", "localhost", "::1")


def access(max_bytes: int = 10_000_000, timeout_s: float = 10.0) -> DicomWebAccess:
    return DicomWebAccess(ALLOWED_HOSTS, timeout_s=timeout_s, max_bytes=max_bytes)


def reference_to(base_url: str, dataset: pydicom.Dataset, **changes) -> DicomWebReference:
    uids = {"study_instance_uid": dataset.StudyInstanceUID, "series_instance_uid": dataset.SeriesInstanceUID,
            "sop_instance_uid": dataset.SOPInstanceUID}
    return DicomWebReference(base_url, **{**uids, **changes})


def part10(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def copy_with_new_sop_instance_uid(dataset: pydicom.Dataset) -> pydicom.Dataset:
    copy = pydicom.dcmread(io.BytesIO(part10(dataset)))
    copy.SOPInstanceUID = generate_uid()
    copy.file_meta.MediaStorageSOPInstanceUID = copy.SOPInstanceUID
    return copy


@pytest.fixture(scope="module")
def ct_small(orthanc) -> pydicom.Dataset:
    """pydicom's CT_small.dcm, stored in Orthanc through its REST API."""
    assert orthanc.upload(CT_SMALL)["Status"] in ("Success", "AlreadyStored")
    return pydicom.dcmread(CT_SMALL)


def error_of(coroutine) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        asyncio.run(coroutine)
    return caught.value


def test_retrieve_returns_the_stored_instance(orthanc, ct_small):
    retrieved = asyncio.run(access().retrieve_instance(reference_to(orthanc.dicomweb_url, ct_small)))

    dataset = pydicom.dcmread(io.BytesIO(retrieved))
    assert dataset.SOPInstanceUID == ct_small.SOPInstanceUID
    assert dataset.file_meta.TransferSyntaxUID == ct_small.file_meta.TransferSyntaxUID
    assert dataset.PixelData == ct_small.PixelData
    assert (dataset.pixel_array == ct_small.pixel_array).all()


def test_a_trailing_slash_on_the_base_url_is_harmless(orthanc, ct_small):
    retrieved = asyncio.run(access().retrieve_instance(reference_to(orthanc.dicomweb_url + "/", ct_small)))
    assert pydicom.dcmread(io.BytesIO(retrieved)).SOPInstanceUID == ct_small.SOPInstanceUID


def test_unknown_instance_is_not_found(orthanc, ct_small):
    error = error_of(access().retrieve_instance(reference_to(orthanc.dicomweb_url, ct_small,
                                                             sop_instance_uid=generate_uid())))
    assert error.code is ErrorCode.NOT_FOUND
    assert "no instance" in error.message


def test_unknown_study_is_not_found(orthanc, ct_small):
    error = error_of(access().retrieve_instance(reference_to(orthanc.dicomweb_url, ct_small,
                                                             study_instance_uid=generate_uid())))
    assert error.code is ErrorCode.NOT_FOUND


def test_the_size_limit_is_about_the_instance_not_the_multipart_envelope(orthanc, ct_small):
    size = CT_SMALL.stat().st_size
    reference = reference_to(orthanc.dicomweb_url, ct_small)

    assert len(asyncio.run(access(max_bytes=size).retrieve_instance(reference))) == size
    error = error_of(access(max_bytes=size - 1).retrieve_instance(reference))
    assert error.code is ErrorCode.PAYLOAD_TOO_LARGE


def test_an_instance_far_above_the_limit_is_refused(orthanc, ct_small):
    error = error_of(access(max_bytes=1000).retrieve_instance(reference_to(orthanc.dicomweb_url, ct_small)))
    assert error.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert "1000 bytes" in error.message


def test_stored_copy_is_listed_and_retrievable(orthanc, ct_small):
    copy = copy_with_new_sop_instance_uid(ct_small)
    assert copy.SOPInstanceUID not in orthanc.sop_instance_uids()

    asyncio.run(access().store(orthanc.dicomweb_url, [part10(copy)]))

    assert copy.SOPInstanceUID in orthanc.sop_instance_uids()
    assert ct_small.SOPInstanceUID in orthanc.sop_instance_uids()
    retrieved = asyncio.run(access().retrieve_instance(reference_to(orthanc.dicomweb_url, copy)))
    assert pydicom.dcmread(io.BytesIO(retrieved)).StudyInstanceUID == ct_small.StudyInstanceUID


def test_several_instances_are_stored_in_one_request(orthanc, ct_small):
    copies = [copy_with_new_sop_instance_uid(ct_small) for _ in range(3)]

    asyncio.run(access().store(orthanc.dicomweb_url, [part10(copy) for copy in copies]))

    assert {copy.SOPInstanceUID for copy in copies} <= orthanc.sop_instance_uids()


def test_a_refused_store_is_unavailable_with_the_server_status(orthanc):
    before = orthanc.sop_instance_uids()

    error = error_of(access().store(orthanc.dicomweb_url, [b"not a DICOM file" * 20]))

    assert error.code is ErrorCode.UNAVAILABLE
    assert "HTTP 400" in error.message  # Orthanc's DICOMweb plugin answers 400 to an unreadable part
    assert orthanc.sop_instance_uids() == before


def test_a_closed_port_is_unavailable(ct_small):
    (closed_port,) = free_ports(1)
    base_url = f"http://127.0.0.1:{closed_port}/dicom-web"

    retrieve_error = error_of(access().retrieve_instance(reference_to(base_url, ct_small)))
    store_error = error_of(access().store(base_url, [part10(ct_small)]))

    for error in (retrieve_error, store_error):
        assert error.code is ErrorCode.UNAVAILABLE
        assert error.retry_after and error.retry_after > 0
