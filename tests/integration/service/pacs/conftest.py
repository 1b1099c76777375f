"""A real Orthanc PACS with its DICOMweb plugin, shared by the session's PACS tests."""

from __future__ import annotations

import pytest

from tests.support.orthanc import OrthancNotInstalled, start_orthanc


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """Orthanc on 127.0.0.1 (free ports, temporary storage), ready; stopped at the end of the session.

    A missing Orthanc fails the tests instead of skipping them: CI must run them (``make install`` installs it).
    """
    try:
        server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    except OrthancNotInstalled as error:
        pytest.fail(str(error), pytrace=False)
    yield server
    server.stop()
