"""Requests and results of the core as plain dataclasses; the transports convert to and from them.

Boxes have two forms everywhere: ``box_px`` in the caller's ORIGINAL pixel coordinates (x1, y1, x2, y2,
x2/y2 exclusive, floats) and ``box_norm`` in the model's [0, 1000) integer convention (see DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from service.pacs.dicomweb import DicomWebReference

MEDIA_TYPES = ("image/png", "image/jpeg", "application/dicom")
VQA_PRECISIONS = ("fp32", "bf16", "int8")
SEGMENTER_PRECISIONS = ("fp32", "fp16", "int8")
MASK_FORMATS = ("png", "rle")
DICOM_FORMATS = ("dicom-seg", "dicom-sr")
OUTPUT_FORMATS = ("json", *DICOM_FORMATS)


@dataclass
class ImageInput:
    """The image bytes as sent, their media type, and which frame of a multi-frame DICOM to use."""

    data: bytes
    media_type: str
    frame: int = 0
    modality: str = ""  # caller's hint for PNG/JPEG ("ct" | "cxr"); DICOM's own Modality tag always wins
    dicomweb: DicomWebReference | None = None  # fetch the DICOM instance by WADO-RS instead of ``data``


@dataclass
class DecodedImage:
    """A decoded image in the units each engine needs, plus what grounding and DICOM outputs need.

    ``pixels``: (H, W) float32 in physical units: Hounsfield units for CT (modality LUT applied), raw
    stored values otherwise. ``display``: (H, W) uint8 as the model sees it (CT windowed, VOI LUT applied,
    MONOCHROME1 inverted). ``modality``: "ct", "cxr" or the DICOM modality in lower case for others
    ("mr", ...); a 16-bit PNG is CT in HU + 1024 (the data engine's convention); 8-bit PNG/JPEG take the
    caller's modality hint (default "cxr") and are display images already.
    """

    pixels: np.ndarray
    display: np.ndarray
    modality: str
    pixel_spacing_mm: tuple[float, float] | None = None  # (row, column) spacing; None when unknown
    source: str = "png"  # png | jpeg | dicom
    dicom: object | None = None  # the pydicom Dataset (pixel data may be released) for DICOM inputs

    @property
    def height(self) -> int:
        """Rows of the original image."""
        return int(self.display.shape[0])

    @property
    def width(self) -> int:
        """Columns of the original image."""
        return int(self.display.shape[1])


@dataclass
class AskRequest:
    """One grounded VQA question about one image."""

    image: ImageInput
    question: str
    model: str = ""  # "" = the default VQA model; else a repository model name (medclm, medclm_int8, ...)
    precision: str = ""  # "" = fp32, or the variant implied by ``model``
    reasoning: bool = True  # step-by-step rationale (True) or a brief answer (False)
    max_tokens: int = 0  # 0 = the server's default
    temperature: float = 0.0
    seed: int | None = None
    verify_grounding: bool = True
    output_formats: tuple[str, ...] = ("json",)  # any of OUTPUT_FORMATS; DICOM ones need a DICOM input
    request_id: str = ""
    deadline: float | None = None  # time.monotonic() by which the result is due; None = no deadline


@dataclass
class Finding:
    """One box the model produced, with the organ the reasoning names for it."""

    label: str  # finding type named in the reasoning ("" when none was named)
    organ: str  # organ the reasoning names ("" when none)
    box_norm: tuple[int, int, int, int]
    box_px: tuple[float, float, float, float]


@dataclass
class GroundingCheck:
    """What the organ segmenter says about one returned box."""

    finding_index: int
    claimed_organ: str  # organ named by the reasoning ("" when none)
    segmented_organ: str  # organ covering most of the box ("background" when none)
    overlap: float  # fraction of the box's pixels inside ``segmented_organ``
    claimed_overlap: float  # fraction of the box's pixels inside ``claimed_organ`` (0 when unnamed)
    consistent: bool  # the claimed organ is the segmented organ


@dataclass
class Usage:
    """Token counts of one generation."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Timings:
    """Milliseconds spent per part of a request."""

    queue_ms: float = 0.0
    preprocess_ms: float = 0.0
    engine_ms: float = 0.0
    time_to_first_token_ms: float = 0.0
    grounding_ms: float = 0.0
    total_ms: float = 0.0


@dataclass
class DicomOutput:
    """One DICOM object the service derived from a DICOM input (Part-10 bytes plus its identity)."""

    format: str  # "dicom-seg" | "dicom-sr"
    data: bytes
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    stored: bool = False  # stored back to the DICOMweb server the input came from (STOW-RS)


@dataclass
class AskResult:
    """The answer to an :class:`AskRequest`."""

    request_id: str
    model: str
    fingerprint: str  # sha256 prefix of the served weights (from the repository's provenance)
    answer: str
    reasoning_steps: list[str]
    text: str  # the raw generated text
    findings: list[Finding]
    grounding: list[GroundingCheck]
    usage: Usage
    timings: Timings
    finish_reason: str  # stop | length | abort
    modality: str
    width: int
    height: int
    dicom_outputs: list[DicomOutput] = field(default_factory=list)  # the requested dicom-* formats, in order


@dataclass
class AskEvent:
    """One streamed event: a text delta while generating, then the final result (and nothing after)."""

    delta: str = ""
    result: AskResult | None = None


@dataclass
class SegmentRequest:
    """Organ segmentation of one image."""

    image: ImageInput
    model: str = ""  # "" = organ_seg_<modality>[_<precision>] chosen from the image
    precision: str = ""  # "" = fp32
    mask_format: str = "png"  # png | rle
    output_formats: tuple[str, ...] = ("json",)  # "json" and/or "dicom-seg" (DICOM input only)
    request_id: str = ""
    deadline: float | None = None


@dataclass
class OrganMask:
    """One organ of a segmentation: its mask, area and bounding box in original pixels."""

    label: int  # global organ label (training.data.anatomy)
    name: str
    pixel_count: int
    area_mm2: float | None  # None when the image carries no pixel spacing
    box_px: tuple[int, int, int, int]  # x1, y1, x2, y2 (exclusive)
    mask_png: bytes = b""  # 1-bit-as-8-bit PNG (0/255), when mask_format == "png"
    mask_rle: list[int] = field(default_factory=list)  # run lengths, row-major, starting with a 0-run


@dataclass
class SegmentResult:
    """The answer to a :class:`SegmentRequest`."""

    request_id: str
    model: str
    fingerprint: str
    modality: str
    width: int
    height: int
    pixel_spacing_mm: tuple[float, float] | None
    organs: list[OrganMask]
    labels: np.ndarray  # (H, W) uint8 global organ labels at the original size (kept for DICOM SEG)
    timings: Timings
    dicom_outputs: list[DicomOutput] = field(default_factory=list)  # the DICOM SEG when asked for


@dataclass
class ModelInfo:
    """One served model, as ListModels and GET /v1/models report it."""

    name: str
    kind: str  # vqa | segmentation
    precision: str
    modalities: list[str]
    fingerprint: str
    ready: bool
    engine: str  # vllm | vllm-remote | onnxruntime | triton
