"""Equal compute for the curriculum ablation: step budgets, the shared warm-up, image-level warm-up targets,
the frozen projector, and the ablation table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.data.records import FindingRecord
from training.medclm.ablation import parse_variants, render_table, variant_name
from training.medclm.data import load_dataset
from training.medclm.errors import MedCLMError
from training.medclm.trainer import Phase, plan_phases, scale_phases, train
from training.medclm.warmup import NUM_ORGAN_LABELS, image_level_targets


def test_scaled_phases_keep_their_proportions_and_sum_to_the_budget():
    scaled = scale_phases([Phase("easy", 100), Phase("medium", 300), Phase("hard", 50)], 90)
    assert [p.name for p in scaled] == ["easy", "medium", "hard"]
    assert [p.steps for p in scaled] == [20, 60, 10] and sum(p.steps for p in scaled) == 90
    crowded = scale_phases([Phase("a", 7), Phase("b", 1), Phase("c", 1)], 4)  # rounding leaves c nothing
    assert [p.steps for p in crowded] == [2, 1, 1]
    with pytest.raises(MedCLMError):
        scale_phases([Phase("a", 1), Phase("b", 1), Phase("c", 1)], 2)


@pytest.mark.parametrize("curriculum", ["sequential", "adaptive", "mixed", "hard-only"])
def test_every_curriculum_gets_the_same_steps_after_the_warm_up(tiny_data, micro, curriculum):
    phases = plan_phases(micro(curriculum=curriculum, curriculum_steps=30, warmup_steps=5),
                         load_dataset(tiny_data), world=1)
    assert phases[0] == Phase("warmup", 5) and sum(p.steps for p in phases[1:]) == 30


def test_variants_resume_from_one_shared_warm_up_with_equal_steps(tiny_data, micro, tmp_path):
    base = micro(curriculum_steps=12, warmup_steps=3, eval_records=0, freeze_projector=True)
    warm = train(base, tiny_data, tmp_path / "warm", progress=False, stop_after=1)
    assert [c.name for c in warm.checkpoints] == ["01-warmup"]
    runs = {}
    for curriculum in ("sequential", "mixed"):
        runs[curriculum] = train(base.__class__(**{**base.to_dict(), "curriculum": curriculum}), tiny_data,
                                 tmp_path / curriculum, resume=warm.checkpoints[0], progress=False)
    for result in runs.values():
        assert result.history[-1]["step"] == 3 + 12  # warm-up steps + the budget, whatever the curriculum
    assert runs["sequential"].history[-1]["lr"] == pytest.approx(runs["mixed"].history[-1]["lr"])
    # the projector stayed as the warm-up left it (freeze_projector), while the text model trained
    from transformers import LlavaForConditionalGeneration

    before = LlavaForConditionalGeneration.from_pretrained(warm.checkpoints[0])
    after = LlavaForConditionalGeneration.from_pretrained(runs["mixed"].checkpoints[-1])
    projector = "model.multi_modal_projector.linear_1.weight"
    embed = "model.language_model.embed_tokens.weight"
    assert torch.equal(before.state_dict()[projector], after.state_dict()[projector])
    assert not torch.equal(before.state_dict()[embed], after.state_dict()[embed])


def test_image_level_targets_name_host_organs_kinds_and_count():
    findings = [FindingRecord(label="nodule", organ="left lung", box_px=(1, 1, 5, 5), box=(1, 1, 5, 5), overlap=1.0,
                              size_mm=4.0),
                FindingRecord(label="mass", organ=None, box_px=(1, 1, 5, 5), box=(1, 1, 5, 5), overlap=None,
                              size_mm=30.0)]
    hosts, kinds, count, organ_boxes, kind_boxes = image_level_targets(findings)
    assert hosts.shape == (NUM_ORGAN_LABELS,) and np.flatnonzero(hosts).tolist() == [8]  # left lung's label
    assert kinds.sum() == 2 and count == 2
    assert image_level_targets([])[2] == 0 and image_level_targets(findings * 3)[2] == 3  # "3 or more"
    assert organ_boxes[8].tolist() == pytest.approx([0.001, 0.001, 0.005, 0.005]) and not organ_boxes[1].any()
    assert kind_boxes.any(axis=1).sum() == 2


def test_variant_names_and_the_table():
    assert variant_name("adaptive", True) == "adaptive+znorm"
    assert parse_variants("sequential,hard-only+znorm") == [("sequential", False), ("hard-only", True)]
    assert len(parse_variants("all")) == 8
    with pytest.raises(MedCLMError):
        parse_variants("curriculum-free")
    row = {"variant": "mixed", "train_seconds": 61.2, "brief": {"accuracy": 0.5},
           "reasoning": {"closed_accuracy": 0.25, "open_accuracy": None, "grounding_acc@0.5": 0.0,
                         "rationale_consistency": 1.0, "format_validity": 0.75}}
    table = render_table({"steps": 10, "warmup_steps": 3, "batch_size": 4, "questions_per_image": 2, "limit": 5,
                          "rows": [row]})
    assert "| mixed | 0.250 | – | 0.000 | 1.000 | 0.750 | 0.500 | 61 |" in table
