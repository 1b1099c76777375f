"""Wire schemas of the MedCLM routes (``/v1/ask``, ``/v1/segment``, ``/v1/models``) and the error body.

Request models convert themselves to the core's dataclasses (``to_core``), response models build from the
core's results (``from_core``). Boxes travel as ``{"x1", "y1", "x2", "y2"}`` objects: ``box_px`` in the
caller's original pixels (floats, x2/y2 exclusive), ``box_norm`` in the model's [0, 1000) integers.
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.core.types import (AskRequest, AskResult, DicomOutput, Finding, GroundingCheck, ImageInput, ModelInfo,
                                OrganMask, SegmentRequest, SegmentResult, Timings, Usage)
from service.errors import invalid
from service.pacs.dicomweb import DicomWebReference

MediaType = Literal["image/png", "image/jpeg", "application/dicom"]
ModalityHint = Literal["", "ct", "cxr"]
AskOutputFormat = Literal["json", "dicom-sr", "dicom-seg"]
SegmentOutputFormat = Literal["json", "dicom-seg"]
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DICOM_MAGIC_AT, _DICOM_MAGIC = 128, b"DICM"  # after the 128-byte preamble of a DICOM Part 10 file


# --- images ---

def sniff_media_type(data: bytes) -> str | None:
    """PNG, JPEG or DICOM (Part 10) from the leading bytes; None when it is none of them."""
    if data.startswith(_PNG_MAGIC):
        return "image/png"
    if data.startswith(_JPEG_MAGIC):
        return "image/jpeg"
    if data[_DICOM_MAGIC_AT:_DICOM_MAGIC_AT + len(_DICOM_MAGIC)] == _DICOM_MAGIC:
        return "application/dicom"
    return None


def decode_base64(text: str, field: str) -> bytes:
    """Strict base64 (whitespace such as line wrapping allowed); INVALID_ARGUMENT on ``field`` otherwise."""
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{field} is not valid base64", field) from None
    if not data:
        raise invalid(f"{field} is empty", field)
    return data


class ImageOptions(BaseModel):
    """How to read the image bytes (multipart forms send these as plain fields next to the file)."""

    model_config = ConfigDict(extra="forbid")

    media_type: MediaType | None = Field(None, description="image/png, image/jpeg or application/dicom; "
                                                           "detected from the bytes when omitted")
    frame: int = Field(0, ge=0, description="frame of a multi-frame DICOM")
    modality: ModalityHint = Field("", description="ct or cxr, a hint for PNG/JPEG; DICOM's Modality tag wins")

    def with_data(self, data: bytes, field: str = "image") -> ImageInput:
        """The core's :class:`ImageInput` for ``data`` (media type detected when not given)."""
        if not data:
            raise invalid(f"{field} is empty", field)
        media_type = self.media_type or sniff_media_type(data)
        if media_type is None:
            raise invalid("the image is not PNG, JPEG or DICOM (Part 10); set image.media_type if it is",
                          f"{field}.media_type")
        return ImageInput(data=data, media_type=media_type, frame=self.frame, modality=self.modality)


class DicomWebBody(BaseModel):
    """A DICOM instance on a DICOMweb server (one the service allows), fetched by WADO-RS."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(..., description="DICOMweb base URL, e.g. http://pacs.local:8042/dicom-web")
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    store_results: bool = Field(False, description="store the DICOM outputs back to the same server (STOW-RS)")

    def to_core(self) -> DicomWebReference:
        """The core's reference (checked by the core: allowed host, valid UIDs)."""
        return DicomWebReference(**self.model_dump())


class ImageBody(ImageOptions):
    """An image inside a JSON body: the file in base64, or a DICOMweb reference."""

    data_base64: str | None = Field(None, description="the image file (PNG, JPEG or DICOM) in base64")
    dicomweb: DicomWebBody | None = Field(None, description="fetch the image by WADO-RS instead of data_base64")

    def to_core(self) -> ImageInput:
        """The core's :class:`ImageInput`; INVALID_ARGUMENT on ``image.data_base64`` (bad base64, or neither
        it nor ``image.dicomweb`` given, or both)."""
        if self.dicomweb is not None:
            if self.data_base64:
                raise invalid("give image.data_base64 or image.dicomweb, not both", "image.data_base64")
            return ImageInput(data=b"", media_type="application/dicom", frame=self.frame, modality=self.modality,
                              dicomweb=self.dicomweb.to_core())
        if self.data_base64 is None:
            raise invalid("the image needs data_base64 (the file) or dicomweb (a DICOMweb reference)",
                          "image.data_base64")
        return self.with_data(decode_base64(self.data_base64, "image.data_base64"))


# --- boxes, usage, timings ---

class BoxPx(BaseModel):
    """A box in the caller's original pixels (x2/y2 exclusive)."""

    x1: float
    y1: float
    x2: float
    y2: float

    @classmethod
    def from_core(cls, box: tuple[float, float, float, float]) -> BoxPx:
        """From an (x1, y1, x2, y2) tuple."""
        return cls(x1=box[0], y1=box[1], x2=box[2], y2=box[3])


class BoxNorm(BaseModel):
    """A box in the model's [0, 1000) integer convention, relative to the image the model saw."""

    x1: int
    y1: int
    x2: int
    y2: int

    @classmethod
    def from_core(cls, box: tuple[int, int, int, int]) -> BoxNorm:
        """From an (x1, y1, x2, y2) tuple."""
        return cls(x1=box[0], y1=box[1], x2=box[2], y2=box[3])


class PixelBox(BaseModel):
    """An organ's bounding box in original pixels, integers, x2/y2 exclusive."""

    x1: int
    y1: int
    x2: int
    y2: int

    @classmethod
    def from_core(cls, box: tuple[int, int, int, int]) -> PixelBox:
        """From an (x1, y1, x2, y2) tuple."""
        return cls(x1=box[0], y1=box[1], x2=box[2], y2=box[3])


class UsageBody(BaseModel):
    """Token counts of the generation."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def from_core(cls, usage: Usage) -> UsageBody:
        """From the core's :class:`Usage`."""
        return cls(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                   total_tokens=usage.prompt_tokens + usage.completion_tokens)


class TimingsBody(BaseModel):
    """Milliseconds per part of the request."""

    queue_ms: float
    preprocess_ms: float
    engine_ms: float
    time_to_first_token_ms: float
    grounding_ms: float
    total_ms: float

    @classmethod
    def from_core(cls, timings: Timings) -> TimingsBody:
        """From the core's :class:`Timings`."""
        return cls(queue_ms=timings.queue_ms, preprocess_ms=timings.preprocess_ms, engine_ms=timings.engine_ms,
                   time_to_first_token_ms=timings.time_to_first_token_ms, grounding_ms=timings.grounding_ms,
                   total_ms=timings.total_ms)


# --- /v1/ask ---

class AskOptions(BaseModel):
    """Everything of an ask request except the image (multipart forms send these as fields)."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(..., description="the question about the image")
    model: str = Field("", description="a served VQA model (GET /v1/models); empty = the default")
    precision: str = Field("", description="fp32, bf16 or int8; empty = fp32 or the variant the model implies")
    brief: bool = Field(False, description="answer only, without the step-by-step reasoning")
    max_tokens: int | None = Field(None, description="longest generation; empty = the server's default")
    temperature: float = Field(0.0, description="sampling temperature; 0 = greedy")
    seed: int | None = Field(None, description="sampling seed")
    verify_grounding: bool = Field(True, description="check each returned box against the organ segmenter")
    output_formats: list[AskOutputFormat] = Field(
        ["json"], description="json, dicom-sr (TID 1500 report), dicom-seg (organ SEG); DICOM ones need a DICOM "
                              "input and make the response application/dicom (one object) or multipart/related")
    timeout_s: float | None = Field(None, gt=0, description="deadline in seconds (or header X-Request-Timeout)")

    def to_core(self, image: ImageInput, request_id: str = "", deadline: float | None = None) -> AskRequest:
        """The core's :class:`AskRequest` for ``image``."""
        return AskRequest(image=image, question=self.question, model=self.model, precision=self.precision,
                          reasoning=not self.brief, max_tokens=self.max_tokens or 0, temperature=self.temperature,
                          seed=self.seed, verify_grounding=self.verify_grounding,
                          output_formats=tuple(self.output_formats), request_id=request_id, deadline=deadline)


class AskRequestBody(AskOptions):
    """``POST /v1/ask`` as JSON: the image in base64 plus the options."""

    image: ImageBody

    def to_core(self, image: ImageInput | None = None, request_id: str = "",
                deadline: float | None = None) -> AskRequest:
        """The core's :class:`AskRequest`, with this body's own image unless ``image`` is given."""
        return super().to_core(image or self.image.to_core(), request_id, deadline)


class FindingBody(BaseModel):
    """One box the model produced and what its reasoning says about it."""

    label: str
    organ: str
    box_norm: BoxNorm
    box_px: BoxPx

    @classmethod
    def from_core(cls, finding: Finding) -> FindingBody:
        """From the core's :class:`Finding`."""
        return cls(label=finding.label, organ=finding.organ, box_norm=BoxNorm.from_core(finding.box_norm),
                   box_px=BoxPx.from_core(finding.box_px))


class GroundingBody(BaseModel):
    """What the organ segmenter says about one returned box."""

    finding_index: int
    claimed_organ: str
    segmented_organ: str
    overlap: float
    claimed_overlap: float
    consistent: bool

    @classmethod
    def from_core(cls, check: GroundingCheck) -> GroundingBody:
        """From the core's :class:`GroundingCheck`."""
        return cls(finding_index=check.finding_index, claimed_organ=check.claimed_organ,
                   segmented_organ=check.segmented_organ, overlap=check.overlap,
                   claimed_overlap=check.claimed_overlap, consistent=check.consistent)


class DicomOutputBody(BaseModel):
    """A DICOM object of the response: which part of the multipart body holds it, and its identity."""

    format: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    stored: bool = Field(description="stored back to the DICOMweb server the image came from")
    size_bytes: int

    @classmethod
    def from_core(cls, output: DicomOutput) -> DicomOutputBody:
        """From the core's :class:`DicomOutput` (its bytes travel as their own body part)."""
        return cls(format=output.format, sop_class_uid=output.sop_class_uid, sop_instance_uid=output.sop_instance_uid,
                   series_instance_uid=output.series_instance_uid, stored=output.stored, size_bytes=len(output.data))


class AskResponseBody(BaseModel):
    """The answer: reasoning steps, answer, findings in original pixels, grounding check, usage, timings."""

    request_id: str
    model: str
    fingerprint: str
    answer: str
    reasoning_steps: list[str]
    text: str
    findings: list[FindingBody]
    grounding: list[GroundingBody]
    usage: UsageBody
    timings: TimingsBody
    finish_reason: str
    modality: str
    width: int
    height: int
    dicom_outputs: list[DicomOutputBody] = Field([], description="the DICOM parts that follow this JSON part")

    @classmethod
    def from_core(cls, result: AskResult) -> AskResponseBody:
        """From the core's :class:`AskResult`."""
        return cls(request_id=result.request_id, model=result.model, fingerprint=result.fingerprint,
                   answer=result.answer, reasoning_steps=list(result.reasoning_steps), text=result.text,
                   findings=[FindingBody.from_core(f) for f in result.findings],
                   grounding=[GroundingBody.from_core(g) for g in result.grounding],
                   usage=UsageBody.from_core(result.usage), timings=TimingsBody.from_core(result.timings),
                   finish_reason=result.finish_reason, modality=result.modality, width=result.width,
                   height=result.height, dicom_outputs=[DicomOutputBody.from_core(o) for o in result.dicom_outputs])


# --- /v1/segment ---

class SegmentOptions(BaseModel):
    """Everything of a segmentation request except the image."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("", description="a served segmenter; empty = organ_seg_<modality> for the image")
    precision: str = Field("", description="fp32, fp16 or int8; empty = fp32")
    mask_format: Literal["png", "rle"] = Field("png", description="png = one base64 PNG per organ (0/255); "
                                                                  "rle = row-major run lengths, first run outside")
    output_formats: list[SegmentOutputFormat] = Field(
        ["json"], description="json and/or dicom-seg (DICOM input only; the response is then application/dicom "
                              "or multipart/related)")
    timeout_s: float | None = Field(None, gt=0, description="deadline in seconds (or header X-Request-Timeout)")

    def to_core(self, image: ImageInput, request_id: str = "", deadline: float | None = None) -> SegmentRequest:
        """The core's :class:`SegmentRequest` for ``image``."""
        return SegmentRequest(image=image, model=self.model, precision=self.precision,
                              mask_format=self.mask_format, output_formats=tuple(self.output_formats),
                              request_id=request_id, deadline=deadline)


class SegmentRequestBody(SegmentOptions):
    """``POST /v1/segment`` as JSON: the image in base64 plus the options."""

    image: ImageBody

    def to_core(self, image: ImageInput | None = None, request_id: str = "",
                deadline: float | None = None) -> SegmentRequest:
        """The core's :class:`SegmentRequest`, with this body's own image unless ``image`` is given."""
        return super().to_core(image or self.image.to_core(), request_id, deadline)


class OrganMaskBody(BaseModel):
    """One organ: mask (PNG in base64 or run lengths), area and box in original pixels."""

    label: int
    name: str
    pixel_count: int
    area_mm2: float | None
    box_px: PixelBox
    mask_png_base64: str | None = None
    mask_rle: list[int] | None = None

    @classmethod
    def from_core(cls, organ: OrganMask, mask_format: str) -> OrganMaskBody:
        """From the core's :class:`OrganMask`, carrying the mask in ``mask_format``."""
        return cls(label=organ.label, name=organ.name, pixel_count=organ.pixel_count, area_mm2=organ.area_mm2,
                   box_px=PixelBox.from_core(organ.box_px),
                   mask_png_base64=base64.b64encode(organ.mask_png).decode() if mask_format == "png" else None,
                   mask_rle=list(organ.mask_rle) if mask_format == "rle" else None)


class SegmentResponseBody(BaseModel):
    """Organ masks of one image at its original size."""

    request_id: str
    model: str
    fingerprint: str
    modality: str
    width: int
    height: int
    pixel_spacing_mm: tuple[float, float] | None = Field(description="(row, column) spacing; null when unknown")
    mask_format: str
    organs: list[OrganMaskBody]
    timings: TimingsBody
    dicom_outputs: list[DicomOutputBody] = Field([], description="the DICOM parts that follow this JSON part")

    @classmethod
    def from_core(cls, result: SegmentResult, mask_format: str) -> SegmentResponseBody:
        """From the core's :class:`SegmentResult`."""
        return cls(request_id=result.request_id, model=result.model, fingerprint=result.fingerprint,
                   modality=result.modality, width=result.width, height=result.height,
                   pixel_spacing_mm=result.pixel_spacing_mm, mask_format=mask_format,
                   organs=[OrganMaskBody.from_core(o, mask_format) for o in result.organs],
                   timings=TimingsBody.from_core(result.timings),
                   dicom_outputs=[DicomOutputBody.from_core(o) for o in result.dicom_outputs])


# --- /v1/models ---

class ModelCard(BaseModel):
    """One served model: OpenAI's model object plus MedCLM's fields."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "medclm"
    kind: str
    precision: str
    modalities: list[str]
    fingerprint: str
    ready: bool
    engine: str

    @classmethod
    def from_core(cls, info: ModelInfo, created: int) -> ModelCard:
        """From the core's :class:`ModelInfo`; ``created`` is when the service started (unix seconds)."""
        return cls(id=info.name, created=created, kind=info.kind, precision=info.precision,
                   modalities=list(info.modalities), fingerprint=info.fingerprint, ready=info.ready,
                   engine=info.engine)


class ModelList(BaseModel):
    """``GET /v1/models``: OpenAI's list shape."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- errors ---

class ErrorDetail(BaseModel):
    """What went wrong."""

    code: str = Field(description="an ErrorCode: INVALID_ARGUMENT, NOT_FOUND, OVERLOADED, ...")
    message: str
    field: str | None = Field(None, description="the request field at fault, as a dotted path")
    request_id: str | None


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in [(400, "invalid request"), (404, "unknown model"), (413, "request too large"),
                                (422, "body does not match the schema"), (429, "overloaded; see Retry-After"),
                                (500, "internal error"), (503, "not ready"), (504, "deadline exceeded")]
}
