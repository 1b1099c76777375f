"""`compare`: evaluation reports side by side against the targets, as a chart and a markdown table."""

import json

import pytest

from training.medclm.__main__ import main
from training.medclm.compare import FIGURES, TARGETS, compare_reports, parse_run
from training.medclm.errors import MedCLMError


def write_report(path, closed, grounding, brief_accuracy, split="test"):
    """The parts of an `evaluate --out` report that `compare` reads."""
    overall = {"n": 10, "closed_accuracy": closed, "open_accuracy": 0.5, "grounding_acc@0.5": grounding,
               "grounding_acc@0.3": None, "grounding_acc@0.5_large": 0.25, "rationale_consistency": 0.75,
               "format_validity": 1.0}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"split": split, "reasoning": {"overall": overall},
                                "brief": {"overall": {"n": 10, "accuracy": brief_accuracy}}}))
    return path


def test_table_and_chart_hold_each_runs_figures(tmp_path):
    first = write_report(tmp_path / "runs" / "a" / "evaluation.json", 0.6, 0.125, 0.55)
    second = write_report(tmp_path / "runs" / "b" / "evaluation.json", 0.8, 0.375, 0.65)

    result = compare_reports([f"digits={first}", str(second)], tmp_path / "docs" / "cmp")

    assert result["figures"]["digits"]["closed_accuracy"] == 0.6
    assert result["figures"]["b"]["hard_style_accuracy"] == 0.65  # a bare path is labelled by its run folder
    png, md = (tmp_path / "docs" / "cmp.png"), (tmp_path / "docs" / "cmp.md")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = md.read_text().splitlines()
    assert len(rows) == 4 and len(FIGURES) == rows[0].count("|") - 3
    assert "closed (≥ 0.95)" in rows[0] and "Acc@0.5 (≥ 0.40)" in rows[0] and "Acc@0.3 |" in rows[0]
    cells = [cell.strip() for cell in rows[2].split("|")[1:-1]]
    assert cells[:5] == ["digits", "10", "0.600", "0.500", "0.125"]
    assert cells[5] == "–"  # a figure the report does not have (no grounding question) is a dash, not 0
    assert [cell.strip() for cell in rows[3].split("|")[1:-1]][-1] == "0.650"


def test_targets_are_the_issues():
    assert TARGETS == {"closed_accuracy": 0.95, "open_accuracy": 0.90, "grounding_acc@0.5": 0.40,
                       "rationale_consistency": 0.90, "format_validity": 0.99}
    assert set(TARGETS) <= {key for key, _ in FIGURES}


def test_bad_runs_are_refused(tmp_path):
    report = write_report(tmp_path / "r" / "evaluation.json", 0.6, 0.1, 0.5)
    with pytest.raises(MedCLMError, match="no evaluation report"):
        compare_reports([f"x={tmp_path / 'missing.json'}"], tmp_path / "out")
    (tmp_path / "other.json").write_text(json.dumps({"checkpoint": "c"}))
    with pytest.raises(MedCLMError, match="not an evaluation report"):
        compare_reports([f"x={tmp_path / 'other.json'}"], tmp_path / "out")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(MedCLMError, match="not an evaluation report"):
        compare_reports([f"x={tmp_path / 'broken.json'}"], tmp_path / "out")
    with pytest.raises(MedCLMError, match="share a label"):
        compare_reports([f"x={report}", f"x={report}"], tmp_path / "out")
    with pytest.raises(MedCLMError, match="LABEL=PATH"):
        parse_run(f"={report}")
    assert not (tmp_path / "out.png").exists()


def test_cli_writes_both_files_and_refuses_a_missing_report(tmp_path, capsys):
    report = write_report(tmp_path / "r" / "evaluation.json", 0.6, 0.1, 0.5)
    assert main(["compare", "--run", f"#1={report}", "--out", str(tmp_path / "cmp"), "--title", "t"]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == [str(tmp_path / "cmp.png"), str(tmp_path / "cmp.md")]
    assert main(["compare", "--run", f"#1={tmp_path / 'nope.json'}", "--out", str(tmp_path / "cmp2")]) == 2
    assert "no evaluation report" in capsys.readouterr().err
