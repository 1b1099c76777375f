"""Reading generated text, the grounding check, mask encodings and admission control (pure core)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.core.admission import AdmissionGate
from service.core.grounding import check_grounding
from service.core.masks import decode_rle, encode_rle, organ_masks
from service.core.output import parse_output
from service.core.types import Finding
from service.errors import ErrorCode, ServiceError
from training.data.anatomy import ORGAN_BY_NAME

SINGLE = """Reasoning:
1. The image is an axial abdominal CT slice (soft-tissue window).
2. The finding lies within the left kidney, on the patient's left side.
3. It is a enhancing mass: a solid lesion brighter than the surrounding parenchyma, about 10 mm across (medium).
4. It is located at <box>[612, 502, 712, 553]</box>, in the posterior, peripheral part of the left kidney.
5. Therefore the answer is left kidney.
Answer: left kidney"""

MULTIPLE = """Reasoning:
1. This is a frontal chest radiograph.
2. Findings are present in: left lung, right lung.
3. There are 2 focal lesions: a nodule (8 mm, right lung); a mass (31 mm, left lung).
4. They are located at <box>[100, 200, 150, 260]</box>, <box>[600, 300, 800, 500]</box>.
5. Therefore the answer is 2.
Answer: 2"""


def test_single_finding_reasoning_is_split_and_its_box_named():
    parsed = parse_output(SINGLE)
    assert len(parsed.reasoning_steps) == 5 and parsed.reasoning_steps[0].startswith("The image is")
    assert parsed.answer == "left kidney"
    assert [(b.box_norm, b.label, b.organ) for b in parsed.boxes] == [
        ((612, 502, 712, 553), "enhancing mass", "left kidney")]


def test_multiple_findings_pair_boxes_with_the_listed_lesions_in_order():
    boxes = parse_output(MULTIPLE).boxes
    assert [(b.label, b.organ) for b in boxes] == [("nodule", "right lung"), ("mass", "left lung")]


def test_brief_answer_box_and_garbage_never_raise():
    assert parse_output("Answer: <box>[10, 20, 30, 40]</box>").boxes[0].box_norm == (10, 20, 30, 40)
    broken = parse_output("Reasoning:\n1. <box>[700, 598, 620, 620]</box>\nAnswer")  # x2 < x1: not a box
    assert broken.boxes == [] and broken.answer
    assert parse_output("").answer == "" and parse_output("").boxes == []


def _labels_with(organ: str, region: tuple[slice, slice], shape=(100, 200)) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    labels[region] = ORGAN_BY_NAME[organ].label
    return labels


def test_grounding_reports_the_organ_under_the_box_and_whether_it_matches():
    labels = _labels_with("liver", (slice(10, 60), slice(20, 120)))
    inside = Finding("hypodense cyst", "liver", (0, 0, 0, 0), (30.0, 20.0, 50.0, 40.0))
    wrong = Finding("hypodense cyst", "spleen", (0, 0, 0, 0), (30.0, 20.0, 50.0, 40.0))
    edge = Finding("", "liver", (0, 0, 0, 0), (110.0, 50.0, 130.0, 70.0))  # a quarter inside the liver
    outside = Finding("", "", (0, 0, 0, 0), (150.0, 70.0, 190.0, 95.0))
    checks = check_grounding([inside, wrong, edge, outside], labels)
    assert (checks[0].segmented_organ, checks[0].overlap, checks[0].consistent) == ("liver", 1.0, True)
    assert (checks[1].segmented_organ, checks[1].claimed_overlap, checks[1].consistent) == ("liver", 0.0, False)
    assert checks[2].segmented_organ == "liver" and checks[2].overlap == pytest.approx(0.25)
    assert (checks[3].segmented_organ, checks[3].consistent) == ("background", False)


def test_rle_round_trips_and_masks_report_area_and_box():
    labels = _labels_with("spleen", (slice(5, 15), slice(7, 27)), shape=(20, 30))
    labels[0, 0] = ORGAN_BY_NAME["spleen"].label  # a run starting at pixel 0
    for mask in (labels > 0, labels == 0):
        assert np.array_equal(decode_rle(encode_rle(mask), 20, 30), mask)
    (spleen,) = organ_masks(labels, (0.5, 2.0), "rle")
    assert spleen.name == "spleen" and spleen.pixel_count == 201 and spleen.area_mm2 == pytest.approx(201.0)
    assert spleen.box_px == (0, 0, 27, 15) and spleen.mask_png == b""
    (png,) = organ_masks(labels, None, "png")
    assert png.area_mm2 is None and png.mask_png.startswith(b"\x89PNG") and png.mask_rle == []


def test_admission_refuses_beyond_running_plus_waiting_and_times_out_waiters():
    async def scenario():
        gate = AdmissionGate("fake engine", max_running=1, max_waiting=1)
        gate.admit()
        gate.admit()
        with pytest.raises(ServiceError) as refused:
            gate.admit()
        assert refused.value.code is ErrorCode.OVERLOADED and refused.value.retry_after
        async with gate.running():
            loop = asyncio.get_running_loop()
            with pytest.raises(ServiceError) as late:
                async with gate.running(deadline=loop.time() + 0.05):
                    pass
            assert late.value.code is ErrorCode.DEADLINE_EXCEEDED
        gate.release()
        gate.release()
        gate.admit()  # capacity is back
        assert gate.admitted == 1

    asyncio.run(scenario())
