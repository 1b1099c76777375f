"""Reading the model's text: reasoning steps, the answer, and each box with the organ and finding it names.

The text follows the rationale contract of ``training.data.rationale`` (DESIGN.md): ``Reasoning:`` with
numbered steps, then ``Answer: ...``; boxes are ``<box>[x1, y1, x2, y2]</box>`` in [0, 1000). A model may
break the contract (it is generated text); parsing never fails, it just finds less.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from training.data.anatomy import FINDING_TYPES, ORGANS
from training.data.boxes import parse_boxes

ANSWER_MARK = "Answer:"
_STEP = re.compile(r"^\s*\d+\.\s+(.*\S)\s*$")
_BOX = re.compile(r"<box>\s*\[[^\]]*\]\s*</box>")
_ORGAN_NAMES = sorted((o.name for o in ORGANS), key=len, reverse=True)  # "right kidney" before "kidney"
_ORGAN = re.compile(r"\b(" + "|".join(re.escape(n) for n in _ORGAN_NAMES) + r")\b")
_FINDING_NAMES = sorted((f.name for f in FINDING_TYPES), key=len, reverse=True)
_FINDING = re.compile(r"\b(" + "|".join(re.escape(n) for n in _FINDING_NAMES) + r")\b")
# Multi-lesion step: "a nodule (12 mm, right lung); a mass (30 mm, mediastinum)".
_LISTED = re.compile(r"\ba (" + "|".join(re.escape(n) for n in _FINDING_NAMES) + r") \([^,()]*, ([^()]*)\)")


@dataclass
class ParsedBox:
    """A box found in the text with what the surrounding reasoning says about it."""

    box_norm: tuple[int, int, int, int]
    label: str
    organ: str


@dataclass
class ParsedOutput:
    """The generated text split by the rationale contract."""

    reasoning_steps: list[str]
    answer: str
    boxes: list[ParsedBox]


def split_reasoning(text: str) -> tuple[list[str], str]:
    """(numbered steps without their numbers, answer after the last ``Answer:``; the whole text if none)."""
    at = text.rfind(ANSWER_MARK)
    reasoning, answer = (text[:at], text[at + len(ANSWER_MARK):]) if at >= 0 else ("", text)
    steps = [m.group(1) for m in map(_STEP.match, reasoning.splitlines()) if m]
    return steps, answer.strip()


def _single(pattern: re.Pattern, text: str) -> str:
    found = set(pattern.findall(text.lower()))
    return found.pop() if len(found) == 1 else ""


def parse_output(text: str) -> ParsedOutput:
    """Steps, answer and boxes; a box's organ/label come from its own step, else from the whole reasoning
    when it names exactly one, else from the multi-lesion list in the same order as the boxes."""
    steps, answer = split_reasoning(text)
    reasoning = "\n".join(steps)
    listed = [(label, organ.strip()) for label, organ in _LISTED.findall(reasoning.lower())]
    boxes: list[ParsedBox] = []
    seen: set[tuple[int, int, int, int]] = set()
    sources = [(step, True) for step in steps] + [(answer, False)]
    for source, in_reasoning in sources:
        for match in _BOX.finditer(source):
            parsed = parse_boxes(match.group(0))
            if not parsed or tuple(parsed[0]) in seen:
                continue
            box = tuple(int(v) for v in parsed[0])
            seen.add(box)
            index = len(boxes)
            organ = _single(_ORGAN, source) if in_reasoning else ""
            label = ""
            if index < len(listed) and len(listed) > 1:
                label, organ = listed[index][0], (listed[index][1] if listed[index][1] in _ORGAN_NAMES else "")
            organ = organ or _single(_ORGAN, reasoning)
            label = label or _single(_FINDING, reasoning)
            boxes.append(ParsedBox(box, label, organ))
    return ParsedOutput(steps, answer, boxes)
