"""Questions per image, with their answers: closed presence, open organ/finding/count/side/size, grounding.

Phrasings come from seeded template pools, so a build is reproducible and the model does not learn one
sentence per question type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from training.data.boxes import format_box
from training.data.context import CaseContext, LinkedFinding

QUESTION_TYPES = ("presence", "organ", "finding", "count", "side", "size", "grounding")

PRESENCE = (
    "Is there a lesion in the {organ}?",
    "Does the {organ} contain a focal abnormality?",
    "Is any focal lesion visible in the {organ}?",
    "Can you see an abnormality in the {organ}?",
)
ORGAN = (
    "Which organ contains the {label}?",
    "In which organ is the {label} located?",
    "Where anatomically is the {label}: which organ hosts it?",
)
FINDING = (
    "What abnormality is seen in the {organ}?",
    "What kind of lesion is present in the {organ}?",
    "Which finding does the {organ} show?",
)
COUNT = (
    "How many lesions are visible in this image?",
    "How many focal findings can be seen?",
    "Count the lesions in this image.",
)
SIDE = (
    "On which side of the patient is the {label}?",
    "Is the {label} on the patient's left or right side?",
)
SIZE = (
    "How large is the {label}: small, medium or large?",
    "What is the size category of the {label}?",
)
GROUNDING = (
    "Where is the {label}? Give its bounding box.",
    "Locate the {label} in the image.",
    "Mark the {label} with a bounding box.",
)


@dataclass
class Question:
    """One question about an image, with its answer and the findings its reasoning refers to."""

    qtype: str
    text: str
    answer: str
    findings: list[LinkedFinding] = field(default_factory=list)
    organ: str | None = None  # the organ the question is about (presence, finding)


def _pick(rng: np.random.Generator, pool: tuple[str, ...]) -> str:
    return pool[int(rng.integers(len(pool)))]


def generate_questions(case: CaseContext, rng: np.random.Generator) -> list[Question]:
    """All questions for one image.

    One presence question (about an organ holding a lesion when there is one, else a visible lesion-free
    organ; the dataset is balanced to equal yes/no afterwards), one count question, and per linked lesion
    organ, finding and grounding questions plus a side or size question. Lesions outside the segmented
    organs only get grounding, side and size questions, since no organ answer exists for them.
    """
    questions: list[Question] = []
    hosts = sorted({f.organ for f in case.findings if f.organ})
    free = [o for o in case.visible_organs if o not in hosts]
    # Ask "yes" and "no" with equal chance where both are possible; balancing trims the rest.
    if hosts and (not free or rng.random() < 0.5):
        organ = hosts[int(rng.integers(len(hosts)))]
        refs = [f for f in case.findings if f.organ == organ]
        questions.append(Question("presence", _pick(rng, PRESENCE).format(organ=organ), "yes", refs, organ))
    elif free:
        organ = free[int(rng.integers(len(free)))]
        questions.append(Question("presence", _pick(rng, PRESENCE).format(organ=organ), "no", [], organ))

    questions.append(Question("count", _pick(rng, COUNT), str(len(case.findings)), list(case.findings)))

    labels = [f.label for f in case.findings]
    for finding in case.findings:
        # Ambiguous references ("the nodule" when there are two) are skipped for single-lesion questions.
        if labels.count(finding.label) > 1:
            continue
        label = finding.label
        if finding.organ:
            questions.append(Question("organ", _pick(rng, ORGAN).format(label=label), finding.organ, [finding]))
            if sum(f.organ == finding.organ for f in case.findings) == 1:
                questions.append(
                    Question("finding", _pick(rng, FINDING).format(organ=finding.organ), label, [finding],
                             finding.organ)
                )
        questions.append(Question("grounding", _pick(rng, GROUNDING).format(label=label), format_box(finding.box),
                                  [finding]))
        if finding.position.side != "midline" and rng.random() < 0.5:
            questions.append(Question("side", _pick(rng, SIDE).format(label=label), finding.position.side,
                                      [finding]))
        else:
            questions.append(Question("size", _pick(rng, SIZE).format(label=label), finding.size_category,
                                      [finding]))
    return questions
