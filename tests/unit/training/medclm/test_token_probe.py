"""Where the token probe looks: the digits of the rationale's first box and its conclusion step."""

from training.medclm.token_probe import box_coordinate_spans, box_digit_positions, conclusion_span

TEXT = ("<image>\nMark the cyst with a bounding box.\nReasoning:\n1. An axial CT slice.\n"
        "4. It is located at <box>[316, 59, 344, 613]</box>, in the right kidney.\n"
        "5. Therefore the bounding box of the finding is given below.\nAnswer: <box>[316, 59, 344, 613]</box>")


def test_box_digit_positions_name_each_digit_of_the_first_box_after_the_target_start():
    start = TEXT.index("Reasoning:")
    positions = box_digit_positions(TEXT, start)
    assert {k: TEXT[v] for k, v in positions.items() if k[0] == "x1"} == {
        ("x1", "hundreds"): "3", ("x1", "tens"): "1", ("x1", "units"): "6"}
    assert ("y1", "hundreds") not in positions  # 59 has no hundreds digit
    assert (TEXT[positions[("y1", "tens")]], TEXT[positions[("y1", "units")]]) == ("5", "9")
    assert TEXT[positions[("y2", "units")]] == "3"
    assert positions[("x1", "hundreds")] < TEXT.index("Answer:")  # the rationale's box, not the answer's copy
    answer_box = box_digit_positions(TEXT, TEXT.index("Answer:"))
    assert answer_box[("x1", "hundreds")] > TEXT.index("Answer:")
    assert box_digit_positions(TEXT, TEXT.rindex("</box>")) == {}  # no box after the last one


def test_box_coordinate_spans_cover_each_whole_value_of_the_first_box():
    spans = box_coordinate_spans(TEXT, TEXT.index("Reasoning:"))
    assert {c: TEXT[a:b] for c, (a, b) in spans.items()} == {"x1": "316", "y1": "59", "x2": "344", "y2": "613"}
    assert spans["x1"][0] < TEXT.index("Answer:")


def test_conclusion_span_is_the_last_step_before_the_answer():
    start, end = conclusion_span(TEXT, TEXT.index("Reasoning:"))
    assert TEXT[start:end] == " Therefore the bounding box of the finding is given below."
    assert conclusion_span("Answer: no", 0) is None  # a brief target has no steps
