"""OnnxOrganSegmenter on the committed default models: the data engine's OrganSegmenter contract."""

import numpy as np
import pytest

from training.data.anatomy import organs_for
from training.data.phantoms import generate_case
from training.data.segmentation import OrganSegmenter
from training.segmenter.errors import SegmenterError
from training.segmenter.metrics import dice
from training.segmenter.onnx_segmenter import OnnxOrganSegmenter

# Cases from a seed the default models never saw (they train on seed 0).
FIXTURE_SEED, FIXTURE_COUNT = 12345, 6


def _mean_dice(segmenter, modality):
    scores = []
    for index in range(FIXTURE_COUNT):
        case = generate_case(modality, FIXTURE_SEED, index)
        mask = segmenter.segment(case.image, modality, case.pixel_spacing_mm)
        assert mask.shape == case.image.shape and mask.dtype == np.uint8
        for organ in organs_for(modality):
            d = dice(mask == organ.label, case.organ_mask == organ.label)
            if not np.isnan(d):
                scores.append(d)
    return float(np.mean(scores))


def test_implements_the_protocol(default_repository):
    assert isinstance(OnnxOrganSegmenter(default_repository), OrganSegmenter)


@pytest.mark.parametrize("modality", ["ct", "cxr"])
def test_masks_use_global_labels_at_input_size(default_repository, modality):
    segmenter = OnnxOrganSegmenter(default_repository)
    case = generate_case(modality, FIXTURE_SEED, 0)
    mask = segmenter.segment(case.image, modality, case.pixel_spacing_mm)
    assert set(np.unique(mask)) <= {0} | {o.label for o in organs_for(modality)}
    assert mask.shape == case.image.shape


@pytest.mark.parametrize("modality", ["ct", "cxr"])
def test_quantised_variant_accuracy_on_fixture_set(default_repository, modality):
    fp32 = _mean_dice(OnnxOrganSegmenter(default_repository, "fp32"), modality)
    int8 = _mean_dice(OnnxOrganSegmenter(default_repository, "int8"), modality)
    fp16 = _mean_dice(OnnxOrganSegmenter(default_repository, "fp16"), modality)
    assert fp32 > 0.85
    assert abs(int8 - fp32) <= 0.01
    assert abs(fp16 - fp32) <= 0.005


def test_bad_modality_and_variant(default_repository):
    with pytest.raises(SegmenterError, match="unknown modality 'mri'"):
        OnnxOrganSegmenter(default_repository).segment(np.zeros((8, 8), np.uint8), "mri", (1.0, 1.0))
    with pytest.raises(SegmenterError, match="unknown variant 'int4'"):
        OnnxOrganSegmenter(default_repository, "int4")


def test_missing_repository_names_the_file(tmp_path):
    with pytest.raises(SegmenterError, match="organ_seg_ct_int8/1/model.onnx does not exist"):
        OnnxOrganSegmenter(tmp_path, "int8").segment(np.zeros((256, 256), np.int16), "ct", (1.0, 1.0))
