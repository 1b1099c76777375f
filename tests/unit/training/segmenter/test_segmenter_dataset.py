import numpy as np

from training.data.anatomy import organs_for
from training.segmenter.dataset import class_lookup, global_lookup, is_test_image, load_dataset_dir


def test_global_labels_map_to_class_order_and_back():
    for modality in ("ct", "cxr"):
        organs = organs_for(modality)
        lookup = class_lookup(modality)
        assert [lookup[o.label] for o in organs] == list(range(1, len(organs) + 1))
        assert global_lookup(modality)[lookup[organs[-1].label]] == organs[-1].label
    assert class_lookup("ct")[organs_for("cxr")[0].label] == 0  # other modality's organs are background


def test_split_is_by_image_name_and_deterministic():
    names = [f"ct_{i:05d}.png" for i in range(200)]
    test = [n for n in names if is_test_image(n, 20)]
    assert test == [n for n in names if is_test_image("images/" + n, 20)]
    assert 20 <= len(test) <= 60


def test_reads_a_written_phantom_dataset(tmp_path):
    from training.data.phantoms import write_phantom_dataset

    root = write_phantom_dataset(tmp_path / "ds", ["ct", "cxr"], 6, seed=3, workers=1, progress=False)
    cases = load_dataset_dir(root, "ct", progress=False)
    assert len(cases) >= 1 and cases[0].image.dtype == np.int16
    assert cases[0].classes.max() <= len(organs_for("ct"))
    cxr = load_dataset_dir(root, "cxr", progress=False)
    assert cxr[0].image.dtype == np.uint8 and cxr[0].image.shape[0] == 320
