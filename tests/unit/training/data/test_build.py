import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data.__main__ import main
from training.data.records import VQARecord


def read_records(out: Path) -> list[dict]:
    return [json.loads(line) for split in ("train", "val", "test") for line in (out / f"{split}.jsonl").open()]


def test_coco_build_writes_valid_records_for_three_stages(coco_dataset, tmp_path):
    out = tmp_path / "vqa"
    code = main(["build", "--source", "coco", "--annotations", str(coco_dataset / "annotations.json"),
                 "--masks", str(coco_dataset / "masks"), "--out", str(out), "--workers", "1", "--no-progress"])
    assert code == 0
    records = read_records(out)
    for record in records:
        VQARecord.model_validate(record)
        assert (out / record["image"]).exists() and (out / record["image_easy"]).exists()
        assert (out / record["organ_mask"]).exists()
    by_question: dict[str, set[str]] = {}
    for r in records:
        by_question.setdefault(r["id"].rsplit("-", 1)[0], set()).add(r["stage"])
    assert all(stages == {"easy", "medium", "hard"} for stages in by_question.values())
    organ = [r for r in records if r["question_type"] == "organ" and r["stage"] == "medium"]
    assert organ and organ[0]["answer"] == "liver" and organ[0]["findings"][0]["overlap"] == 1.0
    easy = next(r for r in records if r["stage"] == "easy" and r["findings"])
    drawn = np.asarray(Image.open(out / easy["image_easy"]))
    assert drawn.ndim == 3 and (drawn[..., 0] == 255).any()  # red box drawn
    presence = [r["answer"] for r in records if r["question_type"] == "presence"]
    assert presence.count("yes") == presence.count("no")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["images"] == 2 and stats["records"] == len(records) and stats["lesions_by_host_organ"] == {"liver": 1}


def test_images_never_leak_across_splits(coco_dataset, tmp_path):
    from training.data.build import split_of

    splits = {split_of(f"case{i}", 7) for i in range(200)}
    assert splits == {"train", "val", "test"}
    assert all(split_of(f"case{i}", 7) == split_of(f"case{i}", 7) for i in range(20))
    out = tmp_path / "vqa"
    main(["build", "--source", "coco", "--annotations", str(coco_dataset / "annotations.json"),
          "--masks", str(coco_dataset / "masks"), "--out", str(out), "--workers", "1", "--no-progress"])
    seen: dict[str, str] = {}
    for split in ("train", "val", "test"):
        for line in (out / f"{split}.jsonl").open():
            case = json.loads(line)["case_id"]
            assert seen.setdefault(case, split) == split


def test_build_without_masks_uses_dataset_hints_or_outside(coco_dataset, tmp_path):
    out = tmp_path / "vqa"
    assert main(["build", "--source", "coco", "--annotations", str(coco_dataset / "annotations.json"),
                 "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    records = read_records(out)
    assert all(r["organ_mask"] is None for r in records)
    assert all(f["organ"] is None for r in records for f in r["case_findings"])
    assert not [r for r in records if r["question_type"] == "organ"]


@pytest.mark.parametrize("workers", [1, 2])
def test_build_is_deterministic(coco_dataset, tmp_path, workers):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        main(["build", "--source", "coco", "--annotations", str(coco_dataset / "annotations.json"),
              "--masks", str(coco_dataset / "masks"), "--out", str(out), "--workers", str(workers),
              "--no-progress", "--seed", "3"])
        outs.append([(s, (out / f"{s}.jsonl").read_text()) for s in ("train", "val", "test")])
    assert outs[0] == outs[1]


def test_phantom_build_keeps_source_dataset_and_every_record_validates(tmp_path):
    out = tmp_path / "phantom"
    assert main(["build", "--source", "phantom", "--modality", "ct,cxr", "--count", "6", "--seed", "2",
                 "--out", str(out), "--workers", "2", "--no-progress"]) == 0
    for name in ("annotations.json", "organs.json", "stats.json", "masks", "images"):
        assert (out / name).exists()
    records = read_records(out)
    assert {r["modality"] for r in records} == {"ct", "cxr"}
    for record in records:
        VQARecord.model_validate(record)
    # Phantom lesions are placed in their host organ; linking on the masks must find that organ.
    source = json.loads((out / "annotations.json").read_text())
    hosts = {(a["image_id"], tuple(a["bbox"])): a["host_organ"] for a in source["annotations"]}
    files = {img["id"]: Path(img["file_name"]).stem for img in source["images"]}
    linked = {(r["case_id"], tuple(f["box_px"])): f["organ"] for r in records for f in r["case_findings"]}
    for (image_id, (x, y, w, h)), host in hosts.items():
        assert linked[(files[image_id], (x, y, x + w, y + h))] == host


def test_unknown_phantom_modality_is_refused(tmp_path, capsys):
    assert main(["build", "--source", "phantom", "--modality", "mr", "--count", "2", "--out", str(tmp_path)]) == 2
    assert "unknown modality" in capsys.readouterr().err
