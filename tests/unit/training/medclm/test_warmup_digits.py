"""The warm-up's box-digit targets: the digits the language model writes, as classes on lesion patches."""

import torch

from training.medclm.warmup import VisionWarmupHeads, box_digits, dense_loss, digit_box


def test_box_digits_are_the_hundreds_and_tens_of_each_coordinate():
    boxes = torch.tensor([[645, 523, 688, 570], [0, 9, 999, 100]], dtype=torch.float32) / 1000
    digits = box_digits(boxes)
    assert digits.tolist() == [[[6, 4], [5, 2], [6, 8], [5, 7]], [[0, 0], [0, 0], [9, 9], [1, 0]]]
    # Read back, each coordinate lands in the middle of its ten-unit band: never more than 5 units off.
    assert (digit_box(digits) - boxes * 1000).abs().max() <= 5


def test_digit_heads_exist_only_when_asked_and_keep_the_other_heads_initial_weights():
    torch.manual_seed(0)
    plain = VisionWarmupHeads(32)
    torch.manual_seed(0)
    with_digits = VisionWarmupHeads(32, digits=True)
    assert "digits.weight" not in plain.state_dict() and plain(torch.zeros(1, 4, 32)).get("digits") is None
    assert with_digits(torch.zeros(2, 4, 32))["digits"].shape == (2, 4, 4, 2, 10)
    for name, value in plain.state_dict().items():  # runs without digits start from the same weights as before
        assert torch.equal(value, with_digits.state_dict()[name]), name


def test_digit_loss_counts_on_lesion_patches_only_and_rewards_the_right_digits():
    heads = VisionWarmupHeads(8, digits=True)
    outputs = heads(torch.zeros(1, 2, 8))
    box = torch.tensor([645, 523, 688, 570], dtype=torch.float32) / 1000
    targets = {"organ": torch.zeros(1, 2, dtype=torch.long), "lesion": torch.tensor([[1.0, 0.0]]),
               "box": torch.stack([box, torch.zeros(4)])[None]}
    right = torch.full((1, 2, 4, 2, 10), -10.0)
    right[0, 0].scatter_(-1, box_digits(box)[..., None], 10.0)  # patch 0 (the lesion) names its digits
    wrong = right.clone()
    wrong[0, 0] = right[0, 0].roll(1, dims=-1)

    def digit_part(digits):
        _, parts = dense_loss({**outputs, "digits": digits}, targets, 1.0, 1.0, 1.0, 1.0, digit_weight=1.0)
        return parts

    assert digit_part(right)["digit_ce"] < 0.01 and digit_part(right)["tens_acc"] == 1.0
    assert digit_part(wrong)["digit_ce"] > 10 and digit_part(wrong)["tens_acc"] == 0.0
    noise = right.clone()
    noise[0, 1] = torch.randn(4, 2, 10) * 50  # the lesion-free patch's digits are not scored
    assert digit_part(noise)["digit_ce"] == digit_part(right)["digit_ce"]
