"""Every bad input gives an error naming its file (and row), or is skipped and counted under --on-error skip."""

import json

import numpy as np
import pytest

from tests.support.files import write_png
from training.data.__main__ import main


def build(coco_dataset, tmp_path, *extra):
    return main(["build", "--source", "coco", "--annotations", str(coco_dataset / "annotations.json"),
                 "--masks", str(coco_dataset / "masks"), "--out", str(tmp_path / "out"), "--workers", "1",
                 "--no-progress", *extra])


def edit_annotations(coco_dataset, change):
    path = coco_dataset / "annotations.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("bbox, words", [
    ([70, 10, 20, 10], "outside the 80x64 image"),
    ([10, 10, 0, 5], "zero area"),
    ([10, 10, -5, 5], "inverted"),
])
def test_bad_boxes_name_file_and_row(coco_dataset, tmp_path, capsys, bbox, words):
    edit_annotations(coco_dataset, lambda d: d["annotations"][0].update(bbox=bbox))
    assert build(coco_dataset, tmp_path) == 2
    err = capsys.readouterr().err
    assert "annotations.json (row images[0])" in err and words in err


def test_unreadable_image_names_the_file(coco_dataset, tmp_path, capsys):
    (coco_dataset / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert build(coco_dataset, tmp_path) == 2
    assert "a.png: unreadable image" in capsys.readouterr().err


def test_missing_image_names_the_file(coco_dataset, tmp_path, capsys):
    (coco_dataset / "images" / "b.png").unlink()
    assert build(coco_dataset, tmp_path) == 2
    assert "b.png: image file not found" in capsys.readouterr().err


def test_unknown_organ_label_in_mask(coco_dataset, tmp_path, capsys):
    write_png(coco_dataset / "masks" / "a.png", np.full((64, 80), 7, np.uint8))
    assert build(coco_dataset, tmp_path) == 2
    assert "masks/a.png: organ mask has label 7, which organs.json does not name" in capsys.readouterr().err


def test_unknown_organ_name_in_organs_json(coco_dataset, tmp_path, capsys):
    (coco_dataset / "organs.json").write_text(json.dumps({"1": "liverr"}))
    assert build(coco_dataset, tmp_path) == 2
    assert "organs.json: unknown organ name 'liverr'" in capsys.readouterr().err


def test_mask_size_mismatch(coco_dataset, tmp_path, capsys):
    write_png(coco_dataset / "masks" / "b.png", np.zeros((10, 10), np.uint8))
    assert build(coco_dataset, tmp_path) == 2
    assert "masks/b.png: organ mask is 10x10 but the image is 80x64" in capsys.readouterr().err


def test_image_size_mismatch(coco_dataset, tmp_path, capsys):
    write_png(coco_dataset / "images" / "b.png", np.zeros((10, 10), np.uint16))
    assert build(coco_dataset, tmp_path) == 2
    assert "b.png: image is 10x10, annotations say 80x64" in capsys.readouterr().err


def test_missing_modality_is_refused_not_guessed(coco_dataset, tmp_path, capsys):
    edit_annotations(coco_dataset, lambda d: d["images"][0].pop("modality"))
    assert build(coco_dataset, tmp_path, "--modality", "ct,cxr") == 2
    assert "has no known modality" in capsys.readouterr().err
    assert build(coco_dataset, tmp_path, "--modality", "ct") == 0


def test_empty_dataset(coco_dataset, tmp_path, capsys):
    edit_annotations(coco_dataset, lambda d: d.update(images=[], annotations=[]))
    assert build(coco_dataset, tmp_path) == 2
    assert "no images" in capsys.readouterr().err


def test_malformed_deeplesion_row_names_file_and_row(tmp_path, capsys):
    csv = tmp_path / "DL_info.csv"
    csv.write_text("File_name,Bounding_boxes,Spacing_mm_px_,Image_size,Coarse_lesion_type,Lesion_diameters_Pixel_\n"
                   'x_1_1_1.png,"1, 2",,,,\n')
    code = main(["build", "--source", "deeplesion", "--csv", str(csv), "--images", str(tmp_path),
                 "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    assert "DL_info.csv (row 2): Bounding_boxes needs 4 numbers" in capsys.readouterr().err


def test_missing_csv_columns(tmp_path, capsys):
    csv = tmp_path / "train.csv"
    csv.write_text("image_id,class_name\nimg,Nodule/Mass\n")
    code = main(["build", "--source", "vindr", "--csv", str(csv), "--images", str(tmp_path),
                 "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2 and "missing columns" in capsys.readouterr().err


def test_skip_mode_drops_bad_images_and_counts_them(coco_dataset, tmp_path):
    (coco_dataset / "images" / "b.png").write_bytes(b"garbage")
    assert build(coco_dataset, tmp_path, "--on-error", "skip") == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["images"] == 1 and stats["skipped"] == 1 and "b.png" in stats["skipped_examples"][0]
    records = [json.loads(line) for s in ("train", "val", "test") for line in (tmp_path / "out" / f"{s}.jsonl").open()]
    assert {r["case_id"] for r in records} == {"a"}


def test_all_images_bad_in_skip_mode_is_still_an_error(coco_dataset, tmp_path, capsys):
    for name in ("a.png", "b.png"):
        (coco_dataset / "images" / name).write_bytes(b"garbage")
    assert build(coco_dataset, tmp_path, "--on-error", "skip") == 2
    assert "no usable records" in capsys.readouterr().err
