"""``POST /v1/segment``: organ masks (PNG or run lengths), areas and boxes, JSON or multipart."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.http.dependencies import core_of, request_id
from service.http.dicom_response import DICOM_CONTENT, result_response
from service.http.parsing import image_request_openapi, read_image_request, request_deadline
from service.http.schemas import ERROR_RESPONSES, SegmentOptions, SegmentRequestBody, SegmentResponseBody
from service.http.streaming import unless_disconnected

router = APIRouter(tags=["segmentation"])


@router.post("/v1/segment", response_model=SegmentResponseBody,
             responses={200: {"content": DICOM_CONTENT}, **ERROR_RESPONSES},
             openapi_extra=image_request_openapi(SegmentRequestBody, SegmentOptions),
             summary="Segment the organs of an image")
async def segment(request: Request) -> SegmentResponseBody | Response:
    """JSON (``image.data_base64`` or ``image.dicomweb``) or multipart (file part ``image`` plus the option
    fields). With output format dicom-seg the answer is ``application/dicom`` or ``multipart/related``."""
    options, image = await read_image_request(request, SegmentRequestBody, SegmentOptions)
    assert isinstance(options, SegmentOptions)
    segment_request = options.to_core(image, request_id(request), request_deadline(request, options.timeout_s))
    result = await unless_disconnected(request, core_of(request).segment(segment_request))
    body = SegmentResponseBody.from_core(result, segment_request.mask_format)
    return result_response(body, result.dicom_outputs, segment_request.output_formats)
