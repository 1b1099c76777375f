"""Wire ↔ core: the only place protobuf messages become ``service.core.types`` dataclasses and back.

Converters translate and nothing more: values (media types, precisions, ranges) are checked by the core,
so an unknown enum number or media type string (or output format) is passed through for the core to reject
with its own message.
"""

from __future__ import annotations

from service.core.types import (AskEvent, AskRequest, AskResult, DicomOutput, Finding, GroundingCheck, ImageInput,
                                ModelInfo, OrganMask, SegmentRequest, SegmentResult, Timings, Usage)
from service.grpc.gen import medclm_pb2 as pb
from service.pacs.dicomweb import DicomWebReference

_MASK_FORMATS = {pb.MASK_FORMAT_UNSPECIFIED: "png", pb.MASK_FORMAT_PNG: "png", pb.MASK_FORMAT_RLE: "rle"}


def image_from_pb(message: pb.Image) -> ImageInput:
    """The wire image as the core's :class:`ImageInput` (bytes or a DICOMweb reference, media type, frame,
    modality hint). A DICOMweb image is DICOM by definition."""
    reference = None
    if message.HasField("dicomweb"):
        ref = message.dicomweb
        reference = DicomWebReference(base_url=ref.base_url, study_instance_uid=ref.study_instance_uid,
                                      series_instance_uid=ref.series_instance_uid,
                                      sop_instance_uid=ref.sop_instance_uid, store_results=ref.store_results)
    media_type = message.media_type or ("application/dicom" if reference is not None else "")
    return ImageInput(data=bytes(message.data), media_type=media_type, frame=int(message.frame),
                      modality=message.modality, dicomweb=reference)


def ask_request_from_pb(message: pb.AskRequest, request_id: str = "", deadline: float | None = None) -> AskRequest:
    """An :class:`AskRequest` from the wire. Unset optionals take the core's defaults: max_tokens 0 (server
    default), temperature 0, no seed, verify_grounding true; ``brief`` is the inverse of ``reasoning``."""
    return AskRequest(
        image=image_from_pb(message.image),
        question=message.question,
        model=message.model,
        precision=message.precision,
        reasoning=not message.brief,
        max_tokens=int(message.max_tokens) if message.HasField("max_tokens") else 0,
        temperature=float(message.temperature) if message.HasField("temperature") else 0.0,
        seed=int(message.seed) if message.HasField("seed") else None,
        verify_grounding=bool(message.verify_grounding) if message.HasField("verify_grounding") else True,
        output_formats=tuple(message.output_formats),
        request_id=request_id,
        deadline=deadline,
    )


def timings_to_pb(timings: Timings) -> pb.Timings:
    """Per-part milliseconds of one request."""
    return pb.Timings(queue_ms=timings.queue_ms, preprocess_ms=timings.preprocess_ms, engine_ms=timings.engine_ms,
                      time_to_first_token_ms=timings.time_to_first_token_ms, grounding_ms=timings.grounding_ms,
                      total_ms=timings.total_ms)


def finding_to_pb(finding: Finding) -> pb.Finding:
    """One finding with its box in original pixels (floats) and in the model's [0, 1000) convention."""
    x1, y1, x2, y2 = finding.box_px
    n1, m1, n2, m2 = finding.box_norm
    return pb.Finding(label=finding.label, organ=finding.organ,
                      box_px=pb.BoxPx(x1=x1, y1=y1, x2=x2, y2=y2),
                      box_norm=pb.BoxNorm(x1=n1, y1=m1, x2=n2, y2=m2))


def grounding_to_pb(check: GroundingCheck) -> pb.GroundingCheck:
    """What the organ segmenter says about one finding's box."""
    return pb.GroundingCheck(finding_index=check.finding_index, claimed_organ=check.claimed_organ,
                             segmented_organ=check.segmented_organ, overlap=check.overlap,
                             claimed_overlap=check.claimed_overlap, consistent=check.consistent)


def usage_to_pb(usage: Usage) -> pb.Usage:
    """Token counts of one generation."""
    return pb.Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)


def ask_result_to_pb(result: AskResult) -> pb.AskResponse:
    """The wire form of an :class:`AskResult`."""
    return pb.AskResponse(
        request_id=result.request_id, model=result.model, fingerprint=result.fingerprint, answer=result.answer,
        reasoning_steps=list(result.reasoning_steps), text=result.text,
        findings=[finding_to_pb(f) for f in result.findings],
        grounding=[grounding_to_pb(g) for g in result.grounding],
        usage=usage_to_pb(result.usage), timings=timings_to_pb(result.timings),
        finish_reason=result.finish_reason, modality=result.modality, width=result.width, height=result.height,
        dicom_outputs=[dicom_output_to_pb(o) for o in result.dicom_outputs])


def dicom_output_to_pb(output: DicomOutput) -> pb.DicomObject:
    """A derived DICOM object: the Part-10 bytes and the UIDs that identify it."""
    return pb.DicomObject(format=output.format, data=output.data, sop_class_uid=output.sop_class_uid,
                          sop_instance_uid=output.sop_instance_uid, series_instance_uid=output.series_instance_uid,
                          stored=output.stored)


def ask_event_to_pb(event: AskEvent) -> pb.AskEvent:
    """A streamed event: the final result when the event carries one, else the text delta."""
    if event.result is not None:
        return pb.AskEvent(result=ask_result_to_pb(event.result))
    return pb.AskEvent(delta=event.delta)


def segment_request_from_pb(message: pb.SegmentRequest, request_id: str = "",
                            deadline: float | None = None) -> SegmentRequest:
    """A :class:`SegmentRequest` from the wire; MASK_FORMAT_UNSPECIFIED means PNG, and an enum number this
    build does not know is passed on as its decimal text for the core to reject."""
    mask_format = _MASK_FORMATS.get(message.mask_format, str(message.mask_format))
    return SegmentRequest(image=image_from_pb(message.image), model=message.model, precision=message.precision,
                          mask_format=mask_format, output_formats=tuple(message.output_formats),
                          request_id=request_id, deadline=deadline)


def organ_to_pb(organ: OrganMask) -> pb.Organ:
    """One organ: mask (PNG bytes or run lengths), pixel count, area when known, box in original pixels."""
    x1, y1, x2, y2 = organ.box_px
    message = pb.Organ(label=organ.label, name=organ.name, pixel_count=organ.pixel_count,
                       box_px=pb.PixelBox(x1=x1, y1=y1, x2=x2, y2=y2), mask_png=organ.mask_png,
                       mask_rle=[int(run) for run in organ.mask_rle])
    if organ.area_mm2 is not None:
        message.area_mm2 = organ.area_mm2
    return message


def segment_result_to_pb(result: SegmentResult) -> pb.SegmentResponse:
    """The wire form of a :class:`SegmentResult` (the label map itself stays on the server)."""
    message = pb.SegmentResponse(
        request_id=result.request_id, model=result.model, fingerprint=result.fingerprint, modality=result.modality,
        width=result.width, height=result.height, organs=[organ_to_pb(o) for o in result.organs],
        timings=timings_to_pb(result.timings), dicom_outputs=[dicom_output_to_pb(o) for o in result.dicom_outputs])
    if result.pixel_spacing_mm is not None:
        row, column = result.pixel_spacing_mm
        message.pixel_spacing_mm.CopyFrom(pb.PixelSpacing(row_mm=row, column_mm=column))
    return message


def model_info_to_pb(info: ModelInfo) -> pb.ModelInfo:
    """One served model as ListModels reports it."""
    return pb.ModelInfo(name=info.name, kind=info.kind, precision=info.precision, modalities=list(info.modalities),
                        fingerprint=info.fingerprint, ready=info.ready, engine=info.engine)
