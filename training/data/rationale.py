"""Structured rationales: numbered steps in clinical order, then the answer.

Order (DESIGN.md): modality and view → anatomy (host organ, side) → finding (appearance, size) →
location (box) → conclusion. Easy targets refer to the box drawn on the image, Medium targets state the box
themselves, Hard targets are the answer alone.
"""

from __future__ import annotations

import json
from typing import Protocol

import numpy as np

from training.data.anatomy import FINDING_BY_NAME
from training.data.boxes import format_box, parse_boxes
from training.data.context import CaseContext, LinkedFinding
from training.data.questions import Question

STAGES = ("easy", "medium", "hard")

MODALITY_STEP = {
    "ct": ("This is an axial CT slice of the abdomen, shown in a soft-tissue window.",
           "The image is an axial abdominal CT slice (soft-tissue window)."),
    "cxr": ("This is a frontal (PA) chest radiograph.",
            "The image is a posteroanterior chest X-ray."),
}


def format_target(stage: str, rationale: list[str], answer: str) -> str:
    """The training target: ``Reasoning:`` with numbered steps then ``Answer:``; Hard is the answer alone."""
    if stage == "hard":
        return f"Answer: {answer}"
    steps = "\n".join(f"{i}. {step}" for i, step in enumerate(rationale, start=1))
    return f"Reasoning:\n{steps}\nAnswer: {answer}"


def easy_prompt(question: Question) -> str:
    """The Easy prompt: the question plus the boxes drawn on the image, when it refers to any."""
    if not question.findings:
        return question.text
    boxes = ", ".join(format_box(f.box) for f in question.findings)
    noun = "box" if len(question.findings) == 1 else "boxes"
    return f"{question.text} The region of interest is marked on the image by the {noun} {boxes}."


class RationaleWriter(Protocol):
    """Writes the reasoning steps for one question about one image at one curriculum stage."""

    def write(self, question: Question, case: CaseContext, stage: str, rng: np.random.Generator) -> list[str]:
        """Return the steps (without numbers), in the clinical order above."""
        ...


def _side_phrase(finding: LinkedFinding) -> str:
    side = finding.position.side
    return "in the midline" if side == "midline" else f"on the patient's {side} side"


def _appearance(finding: LinkedFinding) -> str:
    ftype = FINDING_BY_NAME.get(finding.label)
    return ftype.appearance if ftype else "a focal abnormality"


class TemplateRationaleWriter:
    """Deterministic rationale from templates (the default writer)."""

    def write(self, question: Question, case: CaseContext, stage: str, rng: np.random.Generator) -> list[str]:
        """Steps: modality → anatomy → finding → location → conclusion."""
        pool = MODALITY_STEP[case.modality]
        steps = [pool[int(rng.integers(len(pool)))]]
        refs = question.findings
        if not refs:
            steps += self._negative_steps(question, case)
        elif len(refs) == 1:
            steps += self._single_steps(refs[0], stage)
        else:
            steps += self._multiple_steps(refs, stage)
        steps.append(self._conclusion(question))
        return steps

    def _single_steps(self, f: LinkedFinding, stage: str) -> list[str]:
        if f.organ:
            anatomy = f"The finding lies within the {f.organ}, {_side_phrase(f)}."
        else:
            anatomy = f"The finding lies outside the segmented organs, {_side_phrase(f)}."
        finding = (f"It is a {f.label}: {_appearance(f)}, about {f.size_mm:.0f} mm across ({f.size_category}).")
        where = f"the {f.position.level}, {f.position.depth} part of the {f.organ}" if f.organ else "the image"
        if stage == "easy":
            location = f"It is the region marked by the box {format_box(f.box)}, in {where}."
        else:
            location = f"It is located at {format_box(f.box)}, in {where}."
        return [anatomy, finding, location]

    def _multiple_steps(self, refs: list[LinkedFinding], stage: str) -> list[str]:
        organs = sorted({f.organ or "outside the segmented organs" for f in refs})
        anatomy = f"Findings are present in: {', '.join(organs)}."
        kinds = "; ".join(f"a {f.label} ({f.size_mm:.0f} mm, {f.organ or 'outside the organs'})" for f in refs)
        finding = f"There are {len(refs)} focal lesions: {kinds}."
        boxes = ", ".join(format_box(f.box) for f in refs)
        verb = "They are the regions marked by the boxes" if stage == "easy" else "They are located at"
        return [anatomy, finding, f"{verb} {boxes}."]

    def _negative_steps(self, question: Question, case: CaseContext) -> list[str]:
        if question.organ:
            anatomy = f"The {question.organ} is visible in this image."
            finding = f"No focal lesion is seen within the {question.organ}."
        else:
            organs = ", ".join(case.visible_organs) if case.visible_organs else "the imaged anatomy"
            anatomy = f"Visible structures: {organs}."
            finding = "No focal lesion is seen."
        return [anatomy, finding, "There is no lesion to localise."]

    def _conclusion(self, question: Question) -> str:
        answer = question.answer
        if question.qtype == "grounding":
            return "Therefore the bounding box of the finding is given below."
        return f"Therefore the answer is {answer}."


class OpenAIRationaleWriter:
    """Rephrases the template steps through any OpenAI-compatible chat endpoint (optional; not used in CI).

    The rephrased steps must keep every box token and organ name of the template; a reply that loses or
    invents one is discarded in favour of the template, so a chatty model cannot corrupt the labels.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.template = TemplateRationaleWriter()
        self.rejected = 0

    def write(self, question: Question, case: CaseContext, stage: str, rng: np.random.Generator) -> list[str]:
        """Template steps, rephrased when the endpoint's reply keeps the facts."""
        import httpx

        steps = self.template.write(question, case, stage, rng)
        prompt = (
            "Rephrase each radiology reasoning step below in fluent clinical English. Keep the same number of "
            "steps in the same order, keep every <box>[...]</box> token and every organ name exactly, and add "
            "no new facts. Reply with a JSON list of strings only.\n" + json.dumps(steps)
        )
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            reply = httpx.post(
                f"{self.base_url}/chat/completions",
                json={"model": self.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0.3},
                headers=headers,
                timeout=self.timeout_s,
            )
            reply.raise_for_status()
            candidate = json.loads(reply.json()["choices"][0]["message"]["content"])
        except (httpx.HTTPError, KeyError, ValueError, TypeError):
            self.rejected += 1
            return steps
        if keeps_facts(steps, candidate, case):
            return [str(s) for s in candidate]
        self.rejected += 1
        return steps


def keeps_facts(original: list[str], candidate: object, case: CaseContext) -> bool:
    """True if ``candidate`` is a list of as many steps with the same boxes and organ names as ``original``."""
    if not isinstance(candidate, list) or len(candidate) != len(original):
        return False
    if not all(isinstance(s, str) for s in candidate):
        return False
    for before, after in zip(original, candidate):
        if parse_boxes(before) != parse_boxes(after):
            return False
    organs = {f.organ for f in case.findings if f.organ} | set(case.visible_organs)
    for organ in organs:
        if any(organ in b for b in original) and not any(organ in a for a in candidate):
            return False
    return True
