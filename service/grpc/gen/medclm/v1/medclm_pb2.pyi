from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MaskFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASK_FORMAT_UNSPECIFIED: _ClassVar[MaskFormat]
    MASK_FORMAT_PNG: _ClassVar[MaskFormat]
    MASK_FORMAT_RLE: _ClassVar[MaskFormat]
MASK_FORMAT_UNSPECIFIED: MaskFormat
MASK_FORMAT_PNG: MaskFormat
MASK_FORMAT_RLE: MaskFormat

class Image(_message.Message):
    __slots__ = ("data", "media_type", "frame", "modality", "dicomweb")
    DATA_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    DICOMWEB_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    media_type: str
    frame: int
    modality: str
    dicomweb: DicomWebReference
    def __init__(self, data: _Optional[bytes] = ..., media_type: _Optional[str] = ..., frame: _Optional[int] = ..., modality: _Optional[str] = ..., dicomweb: _Optional[_Union[DicomWebReference, _Mapping]] = ...) -> None: ...

class DicomWebReference(_message.Message):
    __slots__ = ("base_url", "study_instance_uid", "series_instance_uid", "sop_instance_uid", "store_results")
    BASE_URL_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    STORE_RESULTS_FIELD_NUMBER: _ClassVar[int]
    base_url: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    store_results: bool
    def __init__(self, base_url: _Optional[str] = ..., study_instance_uid: _Optional[str] = ..., series_instance_uid: _Optional[str] = ..., sop_instance_uid: _Optional[str] = ..., store_results: bool = ...) -> None: ...

class AskRequest(_message.Message):
    __slots__ = ("image", "question", "model", "precision", "brief", "max_tokens", "temperature", "seed", "verify_grounding", "output_formats")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    BRIEF_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VERIFY_GROUNDING_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMATS_FIELD_NUMBER: _ClassVar[int]
    image: Image
    question: str
    model: str
    precision: str
    brief: bool
    max_tokens: int
    temperature: float
    seed: int
    verify_grounding: bool
    output_formats: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., question: _Optional[str] = ..., model: _Optional[str] = ..., precision: _Optional[str] = ..., brief: bool = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ..., verify_grounding: bool = ..., output_formats: _Optional[_Iterable[str]] = ...) -> None: ...

class BoxPx(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ...) -> None: ...

class BoxNorm(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: int
    y1: int
    x2: int
    y2: int
    def __init__(self, x1: _Optional[int] = ..., y1: _Optional[int] = ..., x2: _Optional[int] = ..., y2: _Optional[int] = ...) -> None: ...

class Finding(_message.Message):
    __slots__ = ("label", "organ", "box_px", "box_norm")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ORGAN_FIELD_NUMBER: _ClassVar[int]
    BOX_PX_FIELD_NUMBER: _ClassVar[int]
    BOX_NORM_FIELD_NUMBER: _ClassVar[int]
    label: str
    organ: str
    box_px: BoxPx
    box_norm: BoxNorm
    def __init__(self, label: _Optional[str] = ..., organ: _Optional[str] = ..., box_px: _Optional[_Union[BoxPx, _Mapping]] = ..., box_norm: _Optional[_Union[BoxNorm, _Mapping]] = ...) -> None: ...

class GroundingCheck(_message.Message):
    __slots__ = ("finding_index", "claimed_organ", "segmented_organ", "overlap", "claimed_overlap", "consistent")
    FINDING_INDEX_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_ORGAN_FIELD_NUMBER: _ClassVar[int]
    SEGMENTED_ORGAN_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    CONSISTENT_FIELD_NUMBER: _ClassVar[int]
    finding_index: int
    claimed_organ: str
    segmented_organ: str
    overlap: float
    claimed_overlap: float
    consistent: bool
    def __init__(self, finding_index: _Optional[int] = ..., claimed_organ: _Optional[str] = ..., segmented_organ: _Optional[str] = ..., overlap: _Optional[float] = ..., claimed_overlap: _Optional[float] = ..., consistent: bool = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_ms", "preprocess_ms", "engine_ms", "time_to_first_token_ms", "grounding_ms", "total_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_MS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    GROUNDING_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    preprocess_ms: float
    engine_ms: float
    time_to_first_token_ms: float
    grounding_ms: float
    total_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., preprocess_ms: _Optional[float] = ..., engine_ms: _Optional[float] = ..., time_to_first_token_ms: _Optional[float] = ..., grounding_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class AskResponse(_message.Message):
    __slots__ = ("request_id", "model", "fingerprint", "answer", "reasoning_steps", "text", "findings", "grounding", "usage", "timings", "finish_reason", "modality", "width", "height", "dicom_outputs")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    REASONING_STEPS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    GROUNDING_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DICOM_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    fingerprint: str
    answer: str
    reasoning_steps: _containers.RepeatedScalarFieldContainer[str]
    text: str
    findings: _containers.RepeatedCompositeFieldContainer[Finding]
    grounding: _containers.RepeatedCompositeFieldContainer[GroundingCheck]
    usage: Usage
    timings: Timings
    finish_reason: str
    modality: str
    width: int
    height: int
    dicom_outputs: _containers.RepeatedCompositeFieldContainer[DicomObject]
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., fingerprint: _Optional[str] = ..., answer: _Optional[str] = ..., reasoning_steps: _Optional[_Iterable[str]] = ..., text: _Optional[str] = ..., findings: _Optional[_Iterable[_Union[Finding, _Mapping]]] = ..., grounding: _Optional[_Iterable[_Union[GroundingCheck, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., finish_reason: _Optional[str] = ..., modality: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., dicom_outputs: _Optional[_Iterable[_Union[DicomObject, _Mapping]]] = ...) -> None: ...

class DicomObject(_message.Message):
    __slots__ = ("format", "data", "sop_class_uid", "sop_instance_uid", "series_instance_uid", "stored")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SOP_CLASS_UID_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    format: str
    data: bytes
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    stored: bool
    def __init__(self, format: _Optional[str] = ..., data: _Optional[bytes] = ..., sop_class_uid: _Optional[str] = ..., sop_instance_uid: _Optional[str] = ..., series_instance_uid: _Optional[str] = ..., stored: bool = ...) -> None: ...

class AskEvent(_message.Message):
    __slots__ = ("delta", "result")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    delta: str
    result: AskResponse
    def __init__(self, delta: _Optional[str] = ..., result: _Optional[_Union[AskResponse, _Mapping]] = ...) -> None: ...

class SegmentRequest(_message.Message):
    __slots__ = ("image", "model", "precision", "mask_format", "output_formats")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    MASK_FORMAT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMATS_FIELD_NUMBER: _ClassVar[int]
    image: Image
    model: str
    precision: str
    mask_format: MaskFormat
    output_formats: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., model: _Optional[str] = ..., precision: _Optional[str] = ..., mask_format: _Optional[_Union[MaskFormat, str]] = ..., output_formats: _Optional[_Iterable[str]] = ...) -> None: ...

class PixelSpacing(_message.Message):
    __slots__ = ("row_mm", "column_mm")
    ROW_MM_FIELD_NUMBER: _ClassVar[int]
    COLUMN_MM_FIELD_NUMBER: _ClassVar[int]
    row_mm: float
    column_mm: float
    def __init__(self, row_mm: _Optional[float] = ..., column_mm: _Optional[float] = ...) -> None: ...

class PixelBox(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: int
    y1: int
    x2: int
    y2: int
    def __init__(self, x1: _Optional[int] = ..., y1: _Optional[int] = ..., x2: _Optional[int] = ..., y2: _Optional[int] = ...) -> None: ...

class Organ(_message.Message):
    __slots__ = ("label", "name", "pixel_count", "area_mm2", "box_px", "mask_png", "mask_rle")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PIXEL_COUNT_FIELD_NUMBER: _ClassVar[int]
    AREA_MM2_FIELD_NUMBER: _ClassVar[int]
    BOX_PX_FIELD_NUMBER: _ClassVar[int]
    MASK_PNG_FIELD_NUMBER: _ClassVar[int]
    MASK_RLE_FIELD_NUMBER: _ClassVar[int]
    label: int
    name: str
    pixel_count: int
    area_mm2: float
    box_px: PixelBox
    mask_png: bytes
    mask_rle: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, label: _Optional[int] = ..., name: _Optional[str] = ..., pixel_count: _Optional[int] = ..., area_mm2: _Optional[float] = ..., box_px: _Optional[_Union[PixelBox, _Mapping]] = ..., mask_png: _Optional[bytes] = ..., mask_rle: _Optional[_Iterable[int]] = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("request_id", "model", "fingerprint", "modality", "width", "height", "pixel_spacing_mm", "organs", "timings", "dicom_outputs")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PIXEL_SPACING_MM_FIELD_NUMBER: _ClassVar[int]
    ORGANS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    DICOM_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    fingerprint: str
    modality: str
    width: int
    height: int
    pixel_spacing_mm: PixelSpacing
    organs: _containers.RepeatedCompositeFieldContainer[Organ]
    timings: Timings
    dicom_outputs: _containers.RepeatedCompositeFieldContainer[DicomObject]
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., fingerprint: _Optional[str] = ..., modality: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., pixel_spacing_mm: _Optional[_Union[PixelSpacing, _Mapping]] = ..., organs: _Optional[_Iterable[_Union[Organ, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., dicom_outputs: _Optional[_Iterable[_Union[DicomObject, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "kind", "precision", "modalities", "fingerprint", "ready", "engine")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    precision: str
    modalities: _containers.RepeatedScalarFieldContainer[str]
    fingerprint: str
    ready: bool
    engine: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., precision: _Optional[str] = ..., modalities: _Optional[_Iterable[str]] = ..., fingerprint: _Optional[str] = ..., ready: bool = ..., engine: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
