"""The organ vocabulary shared by phantoms, dataset masks, the segmenter and the service.

One global label space is used on disk (``organs.json`` maps label → name), so that a dataset holding
CT and chest X-ray cases has one mask convention. Each modality's segmenter predicts its own organs as
classes ``1..K`` in the order given here; ``0`` is background everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

MODALITIES = ("ct", "cxr")


@dataclass(frozen=True)
class Organ:
    """An organ that can host a lesion."""

    label: int  # global mask label in organs.json
    name: str  # human wording used in rationales and answers
    modality: str
    side: str | None  # "right" / "left" for paired organs (patient side), None otherwise


ORGANS: tuple[Organ, ...] = (
    Organ(1, "liver", "ct", "right"),
    Organ(2, "spleen", "ct", "left"),
    Organ(3, "right kidney", "ct", "right"),
    Organ(4, "left kidney", "ct", "left"),
    Organ(5, "aorta", "ct", None),
    Organ(6, "vertebra", "ct", None),
    Organ(7, "right lung", "cxr", "right"),
    Organ(8, "left lung", "cxr", "left"),
    Organ(9, "heart", "cxr", None),
    Organ(10, "mediastinum", "cxr", None),
    Organ(11, "diaphragm", "cxr", None),
)

ORGAN_BY_LABEL = {o.label: o for o in ORGANS}
ORGAN_BY_NAME = {o.name: o for o in ORGANS}


def organs_for(modality: str) -> tuple[Organ, ...]:
    """Organs of one modality, in segmenter class order (class i+1 is the i-th organ)."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    return tuple(o for o in ORGANS if o.modality == modality)


def organ_names_json() -> dict[str, str]:
    """The ``organs.json`` content for the global label space (JSON keys are strings)."""
    return {str(o.label): o.name for o in ORGANS}


@dataclass(frozen=True)
class FindingType:
    """A lesion category of the detection datasets, with the organs it plausibly lives in."""

    name: str  # category name as written in annotations.json and in answers
    modality: str
    hosts: tuple[str, ...]  # organ names
    appearance: str  # one phrase for the rationale's finding step


FINDING_TYPES: tuple[FindingType, ...] = (
    FindingType("hypodense cyst", "ct", ("liver", "right kidney", "left kidney", "spleen"),
                "a well-defined round hypodense lesion of near-water attenuation"),
    FindingType("enhancing mass", "ct", ("liver", "spleen", "right kidney", "left kidney"),
                "a solid lesion brighter than the surrounding parenchyma"),
    FindingType("calcification", "ct", ("aorta", "liver", "spleen"),
                "a small focus of very high attenuation"),
    FindingType("kidney stone", "ct", ("right kidney", "left kidney"),
                "a dense calculus within the renal collecting system"),
    FindingType("nodule", "cxr", ("right lung", "left lung"),
                "a small rounded opacity"),
    FindingType("mass", "cxr", ("right lung", "left lung", "mediastinum"),
                "a large rounded opacity"),
    FindingType("consolidation", "cxr", ("right lung", "left lung"),
                "an ill-defined airspace opacity"),
    FindingType("pleural effusion", "cxr", ("right lung", "left lung"),
                "a dependent opacity blunting the costophrenic angle"),
)

FINDING_BY_NAME = {f.name: f for f in FINDING_TYPES}


def findings_for(modality: str) -> tuple[FindingType, ...]:
    """Finding types of one modality, in category-id order."""
    organs_for(modality)  # validates the modality
    return tuple(f for f in FINDING_TYPES if f.modality == modality)
