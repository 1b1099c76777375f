"""HTTP bodies of results that carry DICOM objects (output_formats dicom-seg / dicom-sr).

* Only DICOM formats and one object: ``application/dicom``, the object itself (what a viewer or a
  ``curl -o result.dcm`` expects).
* Otherwise ``multipart/related``: the JSON result first (``type="application/json"``) when "json" was asked
  for, then one ``application/dicom`` part per object, in request order; ``type="application/dicom"`` when the
  body holds DICOM parts only, as DICOMweb does. Each DICOM part's ``Content-Description`` names its format.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import Response
from pydantic import BaseModel

from service.core.types import DicomOutput
from service.pacs.multipart import Part, multipart_related

DICOM = "application/dicom"
JSON = "application/json"

# OpenAPI: the extra 200 content types of /v1/ask and /v1/segment.
DICOM_CONTENT = {DICOM: {"schema": {"type": "string", "format": "binary"}},
                 "multipart/related": {"schema": {"type": "string", "format": "binary"}}}


def result_response(body: BaseModel, outputs: Sequence[DicomOutput], formats: Sequence[str]) -> BaseModel | Response:
    """``body`` itself (FastAPI writes JSON) when no DICOM object was produced, else the DICOM body above."""
    if not outputs:
        return body
    if "json" not in formats and len(outputs) == 1:
        output = outputs[0]
        return Response(output.data, media_type=DICOM, headers={
            "Content-Disposition": f'attachment; filename="{output.sop_instance_uid}.dcm"',
            "Content-Description": output.format})
    parts = [Part(JSON, body.model_dump_json().encode("utf-8"))] if "json" in formats else []
    parts += [Part(DICOM, o.data, {"Content-Description": o.format}) for o in outputs]
    content_type, data = multipart_related(parts, JSON if "json" in formats else DICOM)
    return Response(data, media_type=content_type)
