"""The data engine on a detection dataset linked through the committed ONNX organ segmenters."""

import json
import shutil
from pathlib import Path

from training.data.__main__ import main

REPOSITORY = Path(__file__).resolve().parents[4] / "model_repository"


def test_segmenter_masks_link_lesions_like_the_true_masks(tmp_path):
    out = tmp_path / "phantom"
    assert main(["build", "--source", "phantom", "--modality", "ct,cxr", "--count", "12", "--seed", "5",
                 "--out", str(out), "--no-progress", "--organ-masks", "segmenter",
                 "--model-repository", str(REPOSITORY)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["organ_source"] == "segmenter"
    agreement = stats["segmenter_link_agreement"]
    assert agreement["lesions"] == stats["lesions"] > 0
    assert agreement["rate"] >= 0.8
    records = [json.loads(line) for s in ("train", "val", "test") for line in (out / f"{s}.jsonl").open()]
    # Predicted masks are written beside, never over, the dataset's true masks.
    assert all(r["organ_mask"].startswith("masks_predicted/") for r in records)
    assert (out / "masks" / "ct_00000.png").exists()


def test_missing_segmenter_models_fail_before_any_work(tmp_path, capsys):
    empty = tmp_path / "repo"
    empty.mkdir()
    shutil.copytree(REPOSITORY / "organ_seg_cxr", empty / "organ_seg_cxr")  # CT model missing
    code = main(["build", "--source", "phantom", "--modality", "ct", "--count", "2", "--out", str(tmp_path / "o"),
                 "--no-progress", "--organ-masks", "segmenter", "--model-repository", str(empty)])
    assert code == 2
    assert "organ segmenter unavailable" in capsys.readouterr().err
