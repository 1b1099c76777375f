"""DicomWebAccess.check: which DICOMweb references the service refuses to follow, and which it accepts."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from service.errors import ErrorCode, ServiceError
from service.pacs.dicomweb import DicomWebAccess, DicomWebReference

ACCESS = DicomWebAccess(["127.0.0.1", "LocalHost", "[::1]", "pacs.hospital.example"], timeout_s=5, max_bytes=1000)
GOOD = DicomWebReference("http://127.0.0.1:8042/dicom-web", "1.2.840.113619.2.55.3.604688119.968.1", "1.2.3.0.4",
                         "1.2.826.0.1.3680043.8.498.10")


def refusal(ref: DicomWebReference) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        ACCESS.check(ref)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    return caught.value


@pytest.mark.parametrize("base_url", [
    "http://127.0.0.1:8042/dicom-web",
    "http://127.0.0.1:8042/dicom-web/",
    "https://pacs.hospital.example/dicom-web",
    "https://PACS.Hospital.Example/dicom-web",
    "http://localhost/dicom-web",
    "http://[::1]:8042/dicom-web",
    "http://127.0.0.1",
])
def test_allowed_hosts_are_accepted(base_url):
    ACCESS.check(replace(GOOD, base_url=base_url))


@pytest.mark.parametrize("base_url", [
    "http://127.0.0.2:8042/dicom-web",
    "http://10.0.0.5/dicom-web",
    "http://169.254.169.254/latest/meta-data",
    "http://pacs.hospital.example.evil.test/dicom-web",  # a suffix of an allowed name is not the name
    "http://evil.test/pacs.hospital.example",
    "http://2130706433/dicom-web",  # 127.0.0.1 as a decimal number: only exact names count
    "http://127.1/dicom-web",
    "http://[::ffff:127.0.0.1]/dicom-web",
])
def test_hosts_not_allowed_are_refused(base_url):
    error = refusal(replace(GOOD, base_url=base_url))
    assert error.field == "image.dicomweb.base_url"
    assert "not an allowed" in error.message


@pytest.mark.parametrize("base_url", ["ftp://127.0.0.1/dicom-web", "file:///etc/passwd", "gopher://127.0.0.1:70/",
                                      "127.0.0.1:8042/dicom-web", "//127.0.0.1/dicom-web"])
def test_schemes_other_than_http_are_refused(base_url):
    error = refusal(replace(GOOD, base_url=base_url))
    assert error.field == "image.dicomweb.base_url"


@pytest.mark.parametrize("base_url", [
    "http://user@127.0.0.1/dicom-web",
    "http://user:secret@127.0.0.1/dicom-web",
    "http://evil.test@127.0.0.1/dicom-web",
    "http://127.0.0.1@evil.test/dicom-web",
    "http://127.0.0.1%2F@evil.test/dicom-web",
])
def test_user_information_is_refused(base_url):
    error = refusal(replace(GOOD, base_url=base_url))
    assert error.field == "image.dicomweb.base_url"
    assert "user information" in error.message


@pytest.mark.parametrize("base_url", [
    "",
    "http:///dicom-web",
    "http://127.0.0.1:99999/dicom-web",
    "http://127.0.0.1:port/dicom-web",
    "http://127.0.0.1/dicom-web?x=1",
    "http://127.0.0.1/dicom-web#x",
    "http://evil.test\\@127.0.0.1/dicom-web",  # parsers disagree on backslashes
    "http://127.0.0.1\t.evil.test/dicom-web",  # urlsplit drops tabs silently
    " http://127.0.0.1/dicom-web",
])
def test_malformed_base_urls_are_refused(base_url):
    assert refusal(replace(GOOD, base_url=base_url)).field == "image.dicomweb.base_url"


@pytest.mark.parametrize("name", ["study_instance_uid", "series_instance_uid", "sop_instance_uid"])
@pytest.mark.parametrize("uid", [
    "",
    "1.2.03",  # leading zero in a component
    "01.2.3",
    "1..2",
    "1.2.",
    ".1.2",
    "1.2.3a",
    "1.2.3/../../4",
    "1.2.3?x=1",
    " 1.2.3",
    "1.2.3\n",
    "1." + "2" * 63,  # 65 characters
])
def test_bad_uids_are_refused_naming_the_field(name, uid):
    error = refusal(replace(GOOD, **{name: uid}))
    assert error.field == f"image.dicomweb.{name}"
    if uid.strip():
        assert uid.strip() not in error.message  # identifiers stay out of messages


@pytest.mark.parametrize("uid", ["0", "1.0.2", "1." + "2" * 62, "2.25.329800735698586629295641978511506172918"])
def test_valid_uids_are_accepted(uid):
    ACCESS.check(replace(GOOD, sop_instance_uid=uid))


def test_retrieve_checks_the_reference_before_any_request():
    with pytest.raises(ServiceError) as caught:
        asyncio.run(ACCESS.retrieve_instance(replace(GOOD, base_url="http://10.0.0.5/dicom-web")))
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert caught.value.field == "image.dicomweb.base_url"


def test_store_checks_the_base_url_before_any_request():
    with pytest.raises(ServiceError) as caught:
        asyncio.run(ACCESS.store("http://10.0.0.5/dicom-web", [b"x"]))
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert caught.value.field == "image.dicomweb.base_url"
