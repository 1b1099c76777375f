import numpy as np
import pytest

from training.segmenter.preprocessing import (PreprocessSpec, default_spec, letterbox_labels, plan_letterbox,
                                              preprocess_image, restore_labels)


def test_ct_window_maps_abdomen_window_to_unit_range():
    spec = default_spec("ct")
    image = np.full((256, 256), -1000, np.int16)
    image[:, 128:] = 3000
    x, _ = preprocess_image(image, spec)
    assert x.dtype == np.float32 and x.shape == (1, 256, 256)
    assert x[0, 0, 0] == 0.0 and x[0, 0, 255] == 1.0
    single, _ = preprocess_image(np.full((256, 256), 40, np.int16), spec)
    assert np.allclose(single, 0.5)


def test_cxr_letterbox_geometry_and_scale():
    spec = default_spec("cxr")
    image = np.full((320, 263), 255, np.uint8)
    x, box = preprocess_image(image, spec)
    assert (box.scaled_height, box.scaled_width) == (256, 210)
    assert box.left == (256 - 210) // 2 and box.top == 0
    assert np.isclose(x[0, 128, 128], 1.0) and x[0, 128, 0] == spec.pad_value


def test_labels_survive_letterbox_and_restore():
    spec = default_spec("cxr")
    labels = np.zeros((320, 280), np.uint8)
    labels[40:200, 30:120] = 1
    labels[100:300, 150:260] = 2
    framed = letterbox_labels(labels, spec)
    box = plan_letterbox(320, 280, spec)
    probabilities = np.eye(3, dtype=np.float32)[framed].transpose(2, 0, 1)
    restored = restore_labels(probabilities, box)
    assert restored.shape == labels.shape and restored.dtype == np.uint8
    assert (restored == labels).mean() > 0.99


def test_spec_json_round_trip():
    spec = default_spec("ct")
    assert PreprocessSpec.from_json(spec.to_json()) == spec


def _pil_restore(probabilities: np.ndarray, box) -> np.ndarray:
    """Reference: resize every channel with PIL (bilinear, letterbox region as the box), then argmax."""
    from PIL import Image

    fy, fx = probabilities.shape[1] / box.input_height, probabilities.shape[2] / box.input_width
    region = (box.left * fx, box.top * fy, (box.left + box.scaled_width) * fx, (box.top + box.scaled_height) * fy)
    return np.stack([np.asarray(Image.fromarray(c, mode="F").resize((box.original_width, box.original_height),
                                                                    Image.BILINEAR, box=region))
                     for c in probabilities]).argmax(axis=0)


@pytest.mark.parametrize("height, width, output_side", [(256, 256, 128), (512, 300, 128), (100, 700, 128),
                                                       (60, 61, 128), (300, 512, 64), (700, 700, 256), (3, 5, 128)])
def test_restored_labels_equal_resizing_every_channel(height, width, output_side):
    """The boundary-only restoration gives the labels of a full per-channel bilinear resize, enlarging and
    shrinking, with and without letterbox bars."""
    rng = np.random.default_rng(height * width)
    box = plan_letterbox(height, width, default_spec("cxr"))
    logits = rng.normal(size=(6, output_side, output_side)).astype(np.float32)
    for _ in range(3):  # smooth the noise into blobs, so there are regions and boundaries
        logits = (logits + np.roll(logits, 1, 1) + np.roll(logits, 1, 2) + np.roll(logits, (1, 1), (1, 2))) / 4
    probabilities = np.exp(8 * logits) / np.exp(8 * logits).sum(axis=0)
    restored = restore_labels(probabilities.astype(np.float32), box)
    assert restored.shape == (height, width) and restored.dtype == np.uint8
    assert (restored == _pil_restore(probabilities.astype(np.float32), box)).mean() > 0.9999
