"""Which output formats a request asked for, and the DICOM objects that answer them, as Part-10 bytes."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence

from service.core.types import DICOM_FORMATS, OUTPUT_FORMATS, DicomOutput
from service.errors import invalid

def check_output_formats(formats: Iterable[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """``formats`` without duplicates, in request order; ("json",) when empty. INVALID_ARGUMENT (field
    ``output_formats[i]``) for a name that is not a format at all or that ``what`` cannot produce."""
    chosen: list[str] = []
    for index, name in enumerate(formats):
        if name not in OUTPUT_FORMATS:
            raise invalid(f"output format {name!r} is not one of {', '.join(OUTPUT_FORMATS)}",
                          f"output_formats[{index}]")
        if name not in allowed:
            raise invalid(f"{what} cannot return {name} (it returns {', '.join(allowed)})", f"output_formats[{index}]")
        if name not in chosen:
            chosen.append(name)
    return tuple(chosen) or ("json",)


def wants_dicom(formats: Iterable[str]) -> bool:
    """At least one DICOM output format was asked for."""
    return any(f in DICOM_FORMATS for f in formats)


def to_output(format_name: str, dataset) -> DicomOutput:
    """A written DICOM object (highdicom or pydicom Dataset) as Part-10 bytes with its identifying UIDs."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)  # a Part-10 file: preamble, "DICM", file meta
    return DicomOutput(format=format_name, data=buffer.getvalue(), sop_class_uid=str(dataset.SOPClassUID),
                       sop_instance_uid=str(dataset.SOPInstanceUID),
                       series_instance_uid=str(dataset.SeriesInstanceUID))
