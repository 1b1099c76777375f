"""Config: presets, YAML and --key=value overrides that fail on unknown keys; round trip through JSON."""

from __future__ import annotations

import pytest

from training.medclm.config import PRESETS, MedCLMConfig, apply_overrides, load_config
from training.medclm.errors import MedCLMError


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_a_valid_config(preset):
    config = load_config(preset)
    assert config.preset == preset
    assert config.image_size % config.patch_size == 0


def test_tiny_is_the_default_and_small():
    config = load_config()
    assert config == MedCLMConfig()
    assert config.image_tokens == 64


def test_overrides_parse_types():
    config = apply_overrides(MedCLMConfig(), ["--lr=5e-4", "--znorm=true", "--curriculum=adaptive",
                                              "--betas=0.9,0.95", "--warmup-steps=7"])
    assert config.lr == 5e-4 and config.znorm is True and config.curriculum == "adaptive"
    assert config.betas == (0.9, 0.95) and config.warmup_steps == 7


@pytest.mark.parametrize("override", ["--learning_rate=1e-3", "--lr", "--warmup_steps=1.5", "--znorm=maybe"])
def test_bad_overrides_fail(override):
    with pytest.raises(MedCLMError):
        apply_overrides(MedCLMConfig(), [override])


def test_invalid_values_fail():
    with pytest.raises(MedCLMError, match="curriculum"):
        apply_overrides(MedCLMConfig(), ["--curriculum=random"])
    with pytest.raises(MedCLMError, match="multiple of patch_size"):
        apply_overrides(MedCLMConfig(), ["--image_size=100"])
    with pytest.raises(MedCLMError, match="hard_preview"):
        apply_overrides(MedCLMConfig(), ["--hard_preview=1.0"])
    with pytest.raises(MedCLMError, match="box_tokens"):
        apply_overrides(MedCLMConfig(), ["--box_tokens=words"])
    with pytest.raises(MedCLMError, match="init_from brings its own"):
        apply_overrides(MedCLMConfig(), ["--box_tokens=pixels", "--init_from=some/llava"])
    with pytest.raises(MedCLMError, match="set box_tokens: digits"):  # the long preset writes pixel tokens
        load_config("long", None, ["--init_from=some/llava"])


def test_yaml_file_applies_and_fails_on_unknown_keys(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("preset: long\nlr: 0.0002\nquestions_per_image: 2\n")
    config = load_config("tiny", good, ["--seed=3"])
    assert config.preset == "long" and config.warmup_steps == PRESETS["long"]["warmup_steps"] != 1500
    assert config.dense_box_encoding == "centre_size" and config.curriculum_steps == 15680  # run #17
    assert config.box_tokens == "pixels" and MedCLMConfig().box_tokens == "digits"  # run #21; tiny keeps digits
    assert config.lr == 2e-4 and config.questions_per_image == 2 and config.seed == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 0.001\nbatchsize: 4\n")
    with pytest.raises(MedCLMError, match="batchsize"):
        load_config("tiny", bad)
    with pytest.raises(MedCLMError, match="does not exist"):
        load_config("tiny", tmp_path / "missing.yaml")


def test_checkpoint_config_round_trip_and_unknown_keys():
    config = MedCLMConfig(lr=1e-4)
    assert MedCLMConfig.from_dict(config.to_dict()) == config
    with pytest.raises(MedCLMError, match="unknown"):
        MedCLMConfig.from_dict({**config.to_dict(), "typo": 1})
