"""A real (micro) training run: warm-up + sequential curriculum, loss falls, checkpoints load, resume works."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoProcessor, LlavaForConditionalGeneration

from training.medclm.checkpoint import META_FILE, STATE_FILE
from training.medclm.data import load_model_image
from training.medclm.errors import MedCLMError
from training.medclm.lesion_probe import lesion_probe
from training.medclm.prompts import build_messages, render_prompt
from training.medclm.trainer import train

HF_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json", "processor_config.json")


def test_micro_run_loss_falls_checkpoints_load_and_resume(tiny_data, micro, tmp_path):
    config = micro(align_steps=4, easy_epochs=4.0, medium_epochs=0.25, hard_epochs=0.5, eval_every=1000, replay=0.5,
                   dense_image_weight=1.0, dense_digit_weight=1.0)
    result = train(config, tiny_data, tmp_path / "run", progress=False)
    names = [p.name for p in result.checkpoints]
    assert names == ["01-warmup", "02-align", "03-easy", "04-medium", "05-hard"]
    align = [h for h in result.history if h["phase"] == "align"]
    assert len(align) == 4 and all(np.isfinite(h["lm"]) for h in align)

    easy = [h["lm"] for h in result.history if h["phase"] == "easy"]
    assert len(easy) >= 20
    assert np.mean(easy[-5:]) < 0.7 * np.mean(easy[:5]), easy
    warm = [h["loss"] for h in result.history if h["phase"] == "warmup"]
    assert all(np.isfinite(warm)) and all(np.isfinite([h["loss"] for h in result.history]))
    digit_ce = [h["digit_ce"] for h in result.history if h["phase"] == "warmup" and "digit_ce" in h]
    assert digit_ce and all(np.isfinite(digit_ce))  # the box-digit heads trained in the warm-up
    assert result.evaluations and result.evaluations[-1]["phase"] == "hard"
    replayed = {h["stage"] for h in result.history if h["phase"] == "hard"}
    assert "hard" in replayed and replayed - {"hard"} <= {"easy", "medium"} and len(replayed) > 1  # replay

    last = result.checkpoints[-1]
    assert (tmp_path / "run" / "loss.png").is_file() and (tmp_path / "run" / "history.jsonl").is_file()
    for name in HF_FILES + (META_FILE, STATE_FILE):
        assert (last / name).is_file(), name
    meta = json.loads((last / META_FILE).read_text())
    assert meta["stage"] == "hard" and meta["config"]["text_hidden"] == config.text_hidden
    assert len(meta["data_fingerprint"]) == 64 and "evaluation" in meta["figures"]
    assert meta["figures"]["mixed_precision"] == config.resolved_precision()  # what ran, not "auto"
    # Peak memory is the process's own high-water mark: it never falls, and torch alone needs > 100 MB.
    peaks = [json.loads((c / META_FILE).read_text())["figures"]["peak_memory_mb"]["rss"] for c in result.checkpoints]
    assert peaks == sorted(peaks) and peaks[0] > 100 and result.peak_memory_mb["rss"] >= peaks[-1]
    with safe_open(str(last / "model.safetensors"), "pt") as handle:  # warm-up heads are never exported
        names = list(handle.keys())
        patch = handle.get_tensor("vision_tower.vision_model.embeddings.patch_embedding.weight")
    assert not any("organ" in k or "lesion" in k or "heads" in k for k in names)
    vision = [k for k in names if "vision_tower" in k]
    assert vision and all(k.startswith("vision_tower.vision_model.") for k in vision)  # vLLM's names
    assert json.loads((last / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"

    # freeze_vision (default): the tower trains only in the warm-up; the language model goes on training.
    with safe_open(str(result.checkpoints[0] / "model.safetensors"), "pt") as handle:
        assert torch.equal(handle.get_tensor("vision_tower.vision_model.embeddings.patch_embedding.weight"), patch)
        warm_lm_head = handle.get_tensor("language_model.lm_head.weight")
    with safe_open(str(last / "model.safetensors"), "pt") as handle:
        assert not torch.equal(handle.get_tensor("language_model.lm_head.weight"), warm_lm_head)

    # The checkpoint works with plain transformers, no training code involved, and loads cleanly.
    model, info = LlavaForConditionalGeneration.from_pretrained(last, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert torch.equal(model.model.vision_tower.embeddings.patch_embedding.weight, patch)
    processor = AutoProcessor.from_pretrained(last)
    record = json.loads((tiny_data / "val.jsonl").read_text().splitlines()[0])
    prompt = render_prompt(processor.tokenizer, build_messages(record["question"], reasoning=False))
    inputs = processor(text=[prompt], images=[load_model_image(tiny_data / record["image"], record["modality"])],
                       return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]

    # The image-reliance diagnostic runs on a checkpoint: three finite losses over questions on distinct images.
    from training.medclm.image_reliance import image_reliance

    reliance = image_reliance(last, tiny_data, split="train", count=6)
    assert reliance["n"] >= 2 and all(np.isfinite(reliance[k]) for k in ("own", "other", "blank"))
    assert reliance["blank"] != reliance["own"]  # the image tokens do reach the language model

    # The lesion probe reads the warm-up heads: one score per lesion of each distinct held-out image.
    probe = lesion_probe(result.checkpoints[0], tiny_data, split="val")
    cases = {}
    for line in (tiny_data / "val.jsonl").read_text().splitlines():
        record = json.loads(line)
        cases.setdefault(record["case_id"], record)
    assert probe["images"] == len(cases)
    assert sum(v["n"] for v in probe["lesions"].values()) == sum(len(r["case_findings"]) for r in cases.values())
    for size in probe["lesions"].values():
        if size["n"]:
            assert 0 <= size["centre_recall"] <= size["window_recall"] <= 1  # the 3x3 window holds the centre
            assert 0 <= size["box_acc@0.5"] <= size["box_acc@0.3"] <= 1  # IoU >= 0.5 implies IoU >= 0.3
            assert 0 <= size["box_median_centre_error"] <= 2 ** 0.5
            assert 0 <= size["digit_box_acc@0.5"] <= size["digit_box_acc@0.3"] <= 1  # the digit heads were trained
            assert 0 <= size["digit_acc/10"] <= 1 and 0 <= size["digit_acc/100"] <= 1
    assert 0 <= probe["image_accuracy"] <= probe["image_accuracy_best_threshold"] <= 1
    counts = [min(len(r["case_findings"]), 3) for r in cases.values()]  # the image-level heads were trained
    majority = max(counts.count(c) for c in set(counts)) / len(counts)
    assert probe["image_level"]["count_majority_rate"] == round(majority, 4)
    assert 0 <= probe["image_level"]["count_accuracy"] <= 1 and 0 <= probe["image_level"]["host_set_exact"] <= 1

    # The token probe scores the rationale's box digits and each question type's conclusion step.
    from training.medclm.token_probe import COORDINATES, token_probe

    tokens = token_probe(last, tiny_data, split="val", limit=12)
    medium = [json.loads(line) for line in (tiny_data / "val.jsonl").read_text().splitlines()]
    medium = [r for r in medium if r["stage"] == "medium"]
    assert tokens["records"] == min(12, len(medium))
    assert set(tokens["box_digits"]) == set(COORDINATES)
    rates = [v for c in tokens["box_digits"].values() for v in c.values() if v is not None]
    assert rates and all(0 <= v <= 1 for v in rates)  # the probed records hold boxes with digit tokens
    assert {k for k in tokens["conclusion_exact"] if "/" not in k} <= {r["question_type"] for r in medium}

    # Resume from the Easy checkpoint: the remaining phases run, the step count continues.
    resumed = train(config, tiny_data, tmp_path / "resumed", resume=result.checkpoints[2], progress=False)
    assert [p.name for p in resumed.checkpoints] == ["04-medium", "05-hard"]
    first_new = next(h for h in resumed.history if h["phase"] == "medium")
    easy_end = max(h["step"] for h in result.history if h["phase"] == "easy")
    assert first_new["step"] == easy_end + 1


def test_adaptive_curriculum_and_znorm_run(tiny_data, micro, tmp_path):
    config = micro(curriculum="adaptive", adaptive_epochs=3, adaptive_epoch_steps=3, adaptive_warm_epochs=0,
                   adaptive_ramp_epochs=1, znorm=True, warmup_steps=0, dense_weight=0.0, eval_records=0)
    result = train(config, tiny_data, tmp_path / "adaptive", progress=False)
    adaptive = [h for h in result.history if h["phase"] == "adaptive"]
    assert len(adaptive) == 9 and all(torch.isfinite(torch.tensor(h["loss"])) for h in adaptive)
    assert {"p_medium", "p_hard", "gap"} <= set(adaptive[-1])
    assert [p.name for p in result.checkpoints] == ["01-adaptive"]


def test_lora_run_from_a_local_checkpoint_exports_plain_llava(tiny_data, micro, tmp_path):
    """Fine-tune a saved checkpoint with LoRA through the trainer; the export is a merged plain LLaVA."""
    base = train(micro(warmup_steps=0, easy_epochs=0.25, medium_epochs=0, hard_epochs=0, eval_records=0),
                 tiny_data, tmp_path / "base", progress=False).checkpoints[-1]
    config = micro(init_from=str(base), lora_rank=4, warmup_steps=0, dense_weight=0.0, easy_epochs=0,
                   medium_epochs=0.25, hard_epochs=0, eval_records=0)
    result = train(config, tiny_data, tmp_path / "lora", progress=False)
    exported = result.checkpoints[-1]
    model = LlavaForConditionalGeneration.from_pretrained(exported)
    assert type(model) is LlavaForConditionalGeneration
    with safe_open(str(exported / "model.safetensors"), "pt") as handle:
        assert not any("lora" in k for k in handle.keys())
    resumed = train(config, tiny_data, tmp_path / "lora2", resume=exported, progress=False)
    assert resumed.checkpoints == []  # nothing left to do, but the LoRA state loaded without error


def test_optimizer_groups_give_the_vision_tower_its_own_learning_rate(tiny_tokenizer, micro):
    from training.medclm.model import build_model
    from training.medclm.objective import MedCLMObjective
    from training.medclm.trainer import param_groups
    from training.medclm.warmup import VisionWarmupHeads

    config = micro(lr=2e-3, vision_lr=1e-4)
    model = build_model(config, tiny_tokenizer)
    objective = MedCLMObjective(model, VisionWarmupHeads(config.vision_hidden), config)
    groups = param_groups(objective, config)
    lr_of = {id(p): group["lr"] for group in groups for p in group["params"]}
    assert len(lr_of) == sum(len(group["params"]) for group in groups) == len(list(objective.parameters()))
    tower = {id(p) for p in model.model.vision_tower.parameters()}
    assert {lr_of[i] for i in tower} == {1e-4}
    assert {lr for i, lr in lr_of.items() if i not in tower} == {2e-3}  # text model, projector, warm-up heads
    decayed = {id(p) for group in groups if group["weight_decay"] > 0 for p in group["params"]}
    assert id(model.model.vision_tower.embeddings.position_embedding.weight) not in decayed
    assert id(model.lm_head.weight) in decayed


def test_hard_preview_mixes_hard_batches_into_easy_and_medium(tiny_data, micro, tmp_path):
    config = micro(warmup_steps=0, easy_epochs=1.0, medium_epochs=1.0, hard_epochs=0.25, replay=0.0,
                   hard_preview=0.5, eval_records=0, dense_weight=0.0)
    result = train(config, tiny_data, tmp_path / "run", progress=False)
    for phase in ("easy", "medium"):
        stages = [h["stage"] for h in result.history if h["phase"] == phase]
        assert set(stages) == {phase, "hard"}, stages  # both drawn, nothing else (replay is off)
    assert {h["stage"] for h in result.history if h["phase"] == "hard"} == {"hard"}  # no preview in Hard itself
    with pytest.raises(MedCLMError, match="no warm-up heads"):  # no warm-up: nothing to probe
        lesion_probe(result.checkpoints[0], tiny_data, split="val")
