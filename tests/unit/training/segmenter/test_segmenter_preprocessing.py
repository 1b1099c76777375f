import numpy as np

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
