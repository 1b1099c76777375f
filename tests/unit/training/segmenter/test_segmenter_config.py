import pytest

from training.segmenter.config import SegmenterConfig, apply_overrides
from training.segmenter.errors import SegmenterError


def test_overrides_parse_types():
    config = apply_overrides(SegmenterConfig(), ["--epochs=3", "--lr=0.01", "--widths=8,16", "--modality=cxr"])
    assert (config.epochs, config.lr, config.widths, config.modality) == (3, 0.01, (8, 16), "cxr")


def test_unknown_key_fails():
    with pytest.raises(SegmenterError, match="unknown config key 'epoch'"):
        apply_overrides(SegmenterConfig(), ["--epoch=3"])


def test_bad_value_fails():
    with pytest.raises(SegmenterError, match="cannot parse value .fast. for epochs"):
        apply_overrides(SegmenterConfig(), ["--epochs=fast"])


def test_unknown_modality_fails():
    with pytest.raises(SegmenterError, match="unknown modality 'mri'"):
        SegmenterConfig(modality="mri")


def test_dict_round_trip_rejects_unknown_keys():
    config = SegmenterConfig(widths=(8, 16))
    assert SegmenterConfig.from_dict(config.to_dict()) == config
    with pytest.raises(SegmenterError, match="unknown config keys: colour"):
        SegmenterConfig.from_dict({**config.to_dict(), "colour": 1})
