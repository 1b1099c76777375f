import pytest

from training.data.boxes import (centre_offset, denormalize_box, format_box, grid_values, normalize_box, parse_boxes,
                                 snap_box, snap_boxes, validate_box_px)


def test_normalise_format_parse_round_trip_on_a_non_square_image():
    box = normalize_box((32.0, 40.0, 96.0, 300.0), width=256, height=320)
    assert box == (125, 125, 375, 938)
    text = f"It is located at {format_box(box)}."
    assert text == "It is located at <box>[125, 125, 375, 938]</box>."
    assert parse_boxes(text) == [box]
    back = denormalize_box(box, 256, 320)
    assert back == pytest.approx((32.0, 40.0, 96.0, 300.16), abs=0.5)


def test_normalised_values_stay_below_1000_at_the_far_edge():
    assert normalize_box((0, 0, 256, 320), 256, 320) == (0, 0, 999, 999)


def test_parse_skips_malformed_inverted_and_out_of_range_boxes():
    text = "<box>[1, 2, 3]</box> <box>[5, 5, 2, 9]</box> <box>[0, 0, 1000, 10]</box> <box>[1,2,3,4]</box>"
    assert parse_boxes(text) == [(1, 2, 3, 4)]


@pytest.mark.parametrize("box, message", [
    ((10, 10, 5, 20), "inverted"),
    ((10, 10, 10, 20), "zero area"),
    ((-1, 0, 5, 5), "outside"),
    ((0, 0, 101, 5), "outside"),
    ((0, 0, float("nan"), 5), "non-finite"),
])
def test_bad_boxes_are_named(box, message):
    with pytest.raises(ValueError, match=message):
        validate_box_px(box, 100, 100)


def test_centre_offset_points_from_the_second_box_to_the_first():
    assert centre_offset((100, 200, 140, 260), (0, 0, 20, 40)) == (110.0, 210.0)
    assert centre_offset((0, 0, 20, 40), (100, 200, 140, 260)) == (-110.0, -210.0)


def test_snapped_boxes_lie_on_the_pixel_grid_and_keep_the_contract():
    values = grid_values(128)
    assert len(values) == 129 and values[:4] == [0, 8, 16, 23] and values[-2:] == [992, 999]
    text = "one <box>[312, 450, 315, 999]</box> two <box>[0, 1, 2, 3]</box> and 1312 mm"
    snapped = snap_boxes(text, 128)
    assert snapped == "one <box>[312, 453, 320, 999]</box> two <box>[0, 0, 8, 8]</box> and 1312 mm"
    for box in parse_boxes(snapped):  # well formed, x2 > x1 even for a box under one pixel
        assert all(v in values for v in box)
    assert snap_boxes(snapped, 128) == snapped  # already on the grid: unchanged
    malformed = "<box>[500, 500, 400, 600]</box> <box>[10, 20, 30, 1000]</box>"
    assert snap_boxes(malformed, 128) == malformed  # reversed or out of range: left as written, not "repaired"
    assert snap_box((997, 997, 999, 999), 128) == (992, 992, 999, 999)  # at the far edge, too
    # Each coordinate moves by at most half a cell (1000 / 128 / 2 units) when the box is wider than one.
    assert max(abs(a - b) for a, b in zip(snap_box((101, 237, 777, 868), 128), (101, 237, 777, 868))) <= 4
