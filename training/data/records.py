"""The VQA record schema (one line of ``{train,val,test}.jsonl``), documented in docs/data.md."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training.data.boxes import format_box, parse_boxes
from training.data.questions import QUESTION_TYPES
from training.data.rationale import format_target


class FindingRecord(BaseModel):
    """A lesion as stored in a record."""

    model_config = ConfigDict(extra="forbid")

    label: str
    organ: str | None = Field(description="host organ; null when the lesion lies outside the segmented organs")
    box_px: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in source pixels, x2/y2 exclusive")
    box: tuple[int, int, int, int] = Field(description="the same box as integers in [0, 1000)")
    overlap: float | None = Field(ge=0.0, le=1.0, description="fraction of the lesion inside its host organ; "
                                  "null when the organ came from the dataset's own label, not a mask")
    size_mm: float = Field(gt=0)


class VQARecord(BaseModel):
    """One question about one image at one curriculum stage, with its reasoning and answer."""

    model_config = ConfigDict(extra="forbid")

    id: str
    case_id: str
    image: str = Field(description="clean image, relative to the dataset folder")
    image_easy: str = Field(description="copy with the referenced boxes drawn (equals image when there are none)")
    organ_mask: str | None = Field(description="organ label mask (global labels), relative; null if none")
    modality: Literal["ct", "cxr"]
    view: str
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    pixel_spacing_mm: tuple[float, float]
    stage: Literal["easy", "medium", "hard"]
    question_type: Literal[QUESTION_TYPES]  # type: ignore[valid-type]
    question: str = Field(min_length=1)
    rationale: list[str] = Field(min_length=1)
    answer: str = Field(min_length=1)
    target: str
    findings: list[FindingRecord] = Field(description="lesions the question and rationale refer to")
    case_findings: list[FindingRecord] = Field(description="every lesion in the image")

    @model_validator(mode="after")
    def _consistent(self) -> "VQARecord":
        if self.target != format_target(self.stage, self.rationale, self.answer):
            raise ValueError("target does not match stage, rationale and answer")
        for finding in self.findings + self.case_findings:
            x1, y1, x2, y2 = finding.box_px
            if not (0 <= x1 < x2 <= self.width and 0 <= y1 < y2 <= self.height):
                raise ValueError(f"finding box {finding.box_px} outside the {self.width}x{self.height} image")
        boxes = [format_box(f.box) for f in self.findings]
        if self.stage == "easy":
            if any(b not in self.question for b in boxes):
                raise ValueError("an Easy question must give the boxes it refers to")
            if self.findings and self.image_easy == self.image:
                raise ValueError("an Easy record with findings needs the image with boxes drawn")
        elif parse_boxes(self.question):
            raise ValueError("Medium and Hard questions must not give a box")
        if self.stage != "hard" and any(b not in "\n".join(self.rationale) for b in boxes):
            raise ValueError("the rationale must state the box of every finding it refers to")
        return self
