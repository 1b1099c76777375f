"""Coded concepts for the DICOM outputs: organs, finding types, report items.

Codes come from pydicom's copy of the DICOM code dictionaries wherever it has them, so they are the
standard's own spelling. Four lateral organs are missing from that dictionary; their SNOMED CT codes are
the ones DICOM's anatomic-region context groups list (CID 4 / CID 7151). Finding types without a
dictionary code are coded as the generic "Lesion" (their exact name travels as text in the report).
What only MedCLM produces (the question, a reasoning step) uses a private coding scheme, ``99MEDCLM``,
as DICOM allows for local codes (PS3.16 §8, "99" prefix).
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from training.data.anatomy import ORGANS

ORGAN_CODES: dict[str, Code] = {
    "liver": codes.SCT.Liver,
    "spleen": codes.SCT.Spleen,
    "right kidney": Code("9846003", "SCT", "Right kidney"),
    "left kidney": Code("18639004", "SCT", "Left kidney"),
    "aorta": codes.SCT.Aorta,
    "vertebra": codes.SCT.Vertebra,
    "right lung": Code("3341006", "SCT", "Right lung"),
    "left lung": Code("44029006", "SCT", "Left lung"),
    "heart": codes.SCT.Heart,
    "mediastinum": codes.SCT.Mediastinum,
    "diaphragm": codes.SCT.Diaphragm,
}
assert set(ORGAN_CODES) == {o.name for o in ORGANS}, "every organ the segmenters know needs a code"

FINDING_CODES: dict[str, Code] = {
    "hypodense cyst": codes.SCT.Cyst,
    "enhancing mass": codes.SCT.Mass,
    "calcification": codes.SCT.PathologicCalcification,
    "kidney stone": codes.SCT.RenalStone,
    "nodule": codes.SCT.Nodule,
    "mass": codes.SCT.Mass,
    "pleural effusion": codes.SCT.PleuralEffusion,
}
LESION = codes.SCT.Lesion

# SEG segment category and the algorithm family of both outputs.
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure
ARTIFICIAL_INTELLIGENCE = codes.DCM.ArtificialIntelligence
PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment

# Report text items: the model's answer is the report's conclusion; the question and each reasoning step
# have no standard concept, so they carry private codes.
CONCLUSION = codes.DCM.Conclusion
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12
QUESTION = Code("QUESTION", "99MEDCLM", "Question asked of the model")
REASONING_STEP = Code("REASONING", "99MEDCLM", "Model reasoning step")

_PROCEDURES = {"ct": codes.LN.CTUnspecifiedBodyRegion, "cxr": codes.LN.XRUnspecifiedBodyRegion,
               "cr": codes.LN.XRUnspecifiedBodyRegion, "dx": codes.LN.XRUnspecifiedBodyRegion}


def organ_code(name: str) -> Code | None:
    """SNOMED CT code of an organ name as the segmenters and the model write it; None when unknown."""
    return ORGAN_CODES.get(name.strip().lower())


def finding_code(label: str) -> Code:
    """Code of a finding type named by the model's reasoning; the generic "Lesion" when it has none."""
    return FINDING_CODES.get(label.strip().lower(), LESION)


def procedure_code(modality: str) -> Code:
    """The imaging procedure a report is about, by modality; "Imaging procedure" when none fits better."""
    return _PROCEDURES.get(modality.lower(), codes.SCT.ImagingProcedure)
