"""Bad input is refused with a clear message BEFORE any training step (no checkpoint is written)."""

from __future__ import annotations

import json
import shutil

import pytest

from training.medclm.__main__ import main
from training.medclm.errors import MedCLMError
from training.medclm.trainer import train


@pytest.fixture
def data_copy(tiny_data, tmp_path):
    """A private copy of the tiny dataset that a test may damage."""
    return shutil.copytree(tiny_data, tmp_path / "data")


def _assert_refused(capsys, argv, message, out):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err, err
    assert not out.exists() or not any(out.iterdir())


def test_missing_data_folder_and_files(tmp_path, capsys, data_copy):
    out = tmp_path / "out"
    _assert_refused(capsys, ["train", "--data", str(tmp_path / "nowhere"), "--out", str(out)], "does not exist", out)
    (data_copy / "val.jsonl").unlink()
    _assert_refused(capsys, ["train", "--data", str(data_copy), "--out", str(out)], "val.jsonl does not exist", out)


def test_record_failing_the_schema_names_file_and_line(data_copy, tmp_path, capsys):
    lines = (data_copy / "train.jsonl").read_text().splitlines()
    record = json.loads(lines[2])
    record["stage"] = "expert"
    lines[2] = json.dumps(record)
    (data_copy / "train.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    _assert_refused(capsys, ["train", "--data", str(data_copy), "--out", str(out)], "train.jsonl line 3", out)
    lines[2] = "{not json"
    (data_copy / "train.jsonl").write_text("\n".join(lines) + "\n")
    _assert_refused(capsys, ["train", "--data", str(data_copy), "--out", str(out)], "line 3: not valid JSON", out)


def test_image_missing_on_disk(data_copy, tmp_path, capsys):
    record = json.loads((data_copy / "val.jsonl").read_text().splitlines()[0])
    (data_copy / record["image"]).unlink()
    out = tmp_path / "out"
    _assert_refused(capsys, ["train", "--data", str(data_copy), "--out", str(out)], "is missing on disk", out)


def test_unknown_config_keys(tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    _assert_refused(capsys, ["train", "--data", str(tiny_data), "--out", str(out), "--learning_rate=1"],
                    "unknown config key 'learning_rate'", out)
    config = tmp_path / "c.yaml"
    config.write_text("lr: 0.001\nepochs: 3\n")
    _assert_refused(capsys, ["train", "--data", str(tiny_data), "--out", str(out), "--config", str(config)],
                    "epochs", out)
    _assert_refused(capsys, ["train", "--data", str(tiny_data), "--out", str(out), "stray"],
                    "--key=value", out)


def test_resume_from_something_that_is_not_a_checkpoint(tiny_data, tmp_path, capsys, micro):
    out = tmp_path / "out"
    _assert_refused(capsys, ["train", "--data", str(tiny_data), "--out", str(out), "--resume", str(tmp_path)],
                    "not a MedCLM checkpoint", out)
    with pytest.raises(MedCLMError, match="init_from"):
        train(micro(init_from=str(tmp_path)), tiny_data, out, progress=False)
