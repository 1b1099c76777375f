"""The warm-up box head's ``centre_size`` encoding: the offset from the patch centre and log size, in patch units."""

import pytest
import torch

from training.medclm.config import MedCLMConfig
from training.medclm.errors import MedCLMError
from training.medclm.warmup import (VisionWarmupHeads, decode_centre_size, dense_loss, encode_centre_size,
                                    patch_centres)


def test_patch_centres_run_row_major_like_the_tower():
    centres = patch_centres(4)
    assert centres[0].tolist() == [0.125, 0.125]
    assert centres[1].tolist() == [0.375, 0.125]  # the next patch is to the right
    assert centres[4].tolist() == [0.125, 0.375]  # a row further down


def test_a_box_centred_on_its_patch_with_a_patch_sized_side_encodes_to_zero():
    grid = 8
    box = torch.tensor([2 / 8, 1 / 8, 3 / 8, 2 / 8])  # exactly patch (row 1, col 2)
    codes = encode_centre_size(box.expand(grid * grid, 4), grid)
    assert torch.allclose(codes[1 * grid + 2], torch.zeros(4), atol=1e-6)
    # one patch to the left of the box, the offset is +1 patch in x
    assert torch.allclose(codes[1 * grid + 1], torch.tensor([1.0, 0.0, 0.0, 0.0]), atol=1e-6)


def test_decoding_inverts_encoding_for_boxes_inside_the_image():
    grid = 8
    boxes = torch.tensor([[0.10, 0.20, 0.13, 0.26], [0.0, 0.0, 1.0, 1.0], [0.5, 0.4, 0.9, 0.41]])
    for box in boxes:
        expanded = box.expand(grid * grid, 4)
        assert torch.allclose(decode_centre_size(encode_centre_size(expanded, grid), grid), expanded, atol=1e-5)


def test_heads_return_corners_whichever_the_encoding():
    features = torch.randn(2, 16, 8)
    for encoding in ("corners", "centre_size"):
        outputs = VisionWarmupHeads(8, box_encoding=encoding)(features)
        box = outputs["box"]
        assert box.shape == (2, 16, 4) and box.min() >= 0 and box.max() <= 1
        assert ("box_code" in outputs) == (encoding == "centre_size")
    # untrained (zero) features sit at each patch's centre with a patch-sized box
    heads = VisionWarmupHeads(8, box_encoding="centre_size")
    torch.nn.init.zeros_(heads.box.weight), torch.nn.init.zeros_(heads.box.bias)
    corners = heads(torch.zeros(1, 16, 8))["box"][0]
    assert torch.allclose((corners[:, :2] + corners[:, 2:]) / 2, patch_centres(4), atol=1e-6)
    assert torch.allclose(corners[:, 2:] - corners[:, :2], torch.full((16, 2), 0.25), atol=1e-6)


def test_the_box_loss_is_measured_in_patch_units_on_lesion_patches():
    grid = 4
    truth = torch.tensor([0.30, 0.30, 0.40, 0.40])
    targets = {"organ": torch.zeros(1, grid * grid, dtype=torch.long),
               "lesion": torch.zeros(1, grid * grid), "box": torch.zeros(1, grid * grid, 4)}
    targets["lesion"][0, 5], targets["box"][0, 5] = 1.0, truth
    heads = VisionWarmupHeads(8, box_encoding="centre_size")
    outputs = heads(torch.zeros(1, grid * grid, 8))
    exact = encode_centre_size(targets["box"], grid)

    def box_l1(codes):
        return dense_loss({**outputs, "box_code": codes}, targets, 1.0, 1.0, 1.0, 1.0)[1]["box_l1"]

    assert box_l1(exact) == pytest.approx(0.0, abs=1e-6)
    shifted = exact.clone()
    shifted[0, 5, 0] += 0.5  # half a patch off in x on the lesion patch
    shifted[0, 0] += 100.0  # a lesion-free patch is not scored
    assert box_l1(shifted) == pytest.approx(0.5 / 4, abs=1e-6)


def test_an_unknown_encoding_is_refused():
    with pytest.raises(MedCLMError, match="dense_box_encoding"):
        MedCLMConfig(dense_box_encoding="xyxy")
    with pytest.raises(ValueError, match="box_encoding"):
        VisionWarmupHeads(8, box_encoding="xyxy")
