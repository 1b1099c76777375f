import numpy as np
import pytest

from training.data.boxes import format_box, parse_boxes
from training.data.context import CaseContext, LinkedFinding
from training.data.linking import Position
from training.data.questions import QUESTION_TYPES, generate_questions
from training.data.rationale import TemplateRationaleWriter, easy_prompt, format_target, keeps_facts

CYST = LinkedFinding("hypodense cyst", "liver", 0.95, (40.0, 50.0, 60.0, 66.0), (156, 195, 234, 258), 24.0,
                     Position("right", "anterior", "peripheral"))
STONE = LinkedFinding("kidney stone", "left kidney", 1.0, (180.0, 150.0, 186.0, 156.0), (703, 586, 727, 609), 6.0,
                      Position("left", "posterior", "central"))
OUTSIDE = LinkedFinding("calcification", None, 0.1, (120.0, 10.0, 124.0, 14.0), (469, 39, 484, 55), 4.0,
                        Position("midline", "anterior", "peripheral"))
ORGANS = ["liver", "spleen", "right kidney", "left kidney", "aorta", "vertebra"]


def context(*findings):
    return CaseContext("ct_00001", "ct", "axial", 256, 256, list(findings), ORGANS)


def by_type(questions, qtype):
    return [q for q in questions if q.qtype == qtype]


def test_every_question_type_appears_with_the_right_answer():
    seen = set()
    for seed in range(20):
        questions = generate_questions(context(CYST, STONE), np.random.default_rng(seed))
        seen |= {q.qtype for q in questions}
        assert by_type(questions, "count")[0].answer == "2"
        organ = {q.findings[0].label: q.answer for q in by_type(questions, "organ")}
        assert organ == {"hypodense cyst": "liver", "kidney stone": "left kidney"}
        finding = {q.organ: q.answer for q in by_type(questions, "finding")}
        assert finding == {"liver": "hypodense cyst", "left kidney": "kidney stone"}
        assert {q.answer for q in by_type(questions, "grounding")} == {format_box(CYST.box), format_box(STONE.box)}
        for q in by_type(questions, "side"):
            assert q.answer == q.findings[0].position.side
        for q in by_type(questions, "size"):
            assert q.answer == {"hypodense cyst": "medium", "kidney stone": "small"}[q.findings[0].label]
        for q in by_type(questions, "presence"):
            expected = "yes" if q.organ in ("liver", "left kidney") else "no"
            assert q.answer == expected and q.organ in ORGANS
    assert seen == set(QUESTION_TYPES)


def test_presence_questions_are_roughly_balanced_before_trimming():
    answers = [q.answer for seed in range(200) for q in by_type(generate_questions(context(CYST),
                                                                np.random.default_rng(seed)), "presence")]
    assert 0.35 < answers.count("yes") / len(answers) < 0.65


def test_image_without_lesions_gets_negative_presence_and_zero_count():
    questions = generate_questions(context(), np.random.default_rng(0))
    assert {q.qtype for q in questions} == {"presence", "count"}
    assert by_type(questions, "presence")[0].answer == "no"
    assert by_type(questions, "count")[0].answer == "0"


def test_lesion_outside_organs_gets_no_organ_question():
    questions = generate_questions(context(OUTSIDE), np.random.default_rng(1))
    assert not by_type(questions, "organ") and not by_type(questions, "finding")
    assert by_type(questions, "grounding")


def test_duplicate_labels_get_no_ambiguous_single_lesion_questions():
    twin = LinkedFinding("hypodense cyst", "spleen", 0.9, (200.0, 60.0, 210.0, 70.0), (781, 234, 820, 273), 9.0,
                         Position("left", "anterior", "central"))
    questions = generate_questions(context(CYST, twin), np.random.default_rng(0))
    assert not by_type(questions, "organ") and not by_type(questions, "grounding")
    assert by_type(questions, "count")[0].answer == "2"


@pytest.mark.parametrize("stage", ["easy", "medium", "hard"])
def test_stage_targets(stage):
    writer = TemplateRationaleWriter()
    question = next(q for q in generate_questions(context(CYST), np.random.default_rng(3)) if q.qtype == "organ")
    steps = writer.write(question, context(CYST), stage, np.random.default_rng(0))
    target = format_target(stage, steps, question.answer)
    if stage == "hard":
        assert target == "Answer: liver"
        return
    lines = target.split("\n")
    assert lines[0] == "Reasoning:" and lines[-1] == "Answer: liver"
    assert [line.split(".")[0] for line in lines[1:-1]] == ["1", "2", "3", "4", "5"]
    # Clinical order: modality → anatomy (organ, side) → finding → location (box) → conclusion.
    assert "CT" in lines[1]
    assert "liver" in lines[2] and "right" in lines[2]
    assert "hypodense cyst" in lines[3] and "24 mm" in lines[3]
    assert parse_boxes(lines[4]) == [CYST.box]
    assert "liver" in lines[5]
    assert ("marked" in lines[4]) == (stage == "easy")


def test_easy_prompt_gives_the_box_and_medium_does_not():
    question = next(q for q in generate_questions(context(CYST), np.random.default_rng(3)) if q.qtype == "grounding")
    assert parse_boxes(easy_prompt(question)) == [CYST.box]
    assert parse_boxes(question.text) == []


def test_negative_rationale_states_no_lesion():
    question = by_type(generate_questions(context(), np.random.default_rng(0)), "presence")[0]
    steps = TemplateRationaleWriter().write(question, context(), "medium", np.random.default_rng(0))
    assert "No focal lesion" in steps[2] and steps[-1].endswith("no.")


def test_rephrased_steps_must_keep_boxes_and_organs():
    steps = TemplateRationaleWriter().write(generate_questions(context(CYST), np.random.default_rng(3))[2],
                                            context(CYST), "medium", np.random.default_rng(0))
    assert keeps_facts(steps, list(steps), context(CYST))
    moved = [s.replace(format_box(CYST.box), "<box>[1, 2, 3, 4]</box>") for s in steps]
    assert not keeps_facts(steps, moved, context(CYST))
    assert not keeps_facts(steps, [s.replace("liver", "organ") for s in steps], context(CYST))
    assert not keeps_facts(steps, steps[:-1], context(CYST))
    assert not keeps_facts(steps, "not a list", context(CYST))
