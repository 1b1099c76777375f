"""ZNorm: each gradient tensor standardised (population std), scalars and 1-element tensors untouched."""

from __future__ import annotations

import torch

from training.medclm.znorm import ZNORM_EPS, znorm_gradients


def test_gradients_are_standardised_per_tensor():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(5, 7))
    bias = torch.nn.Parameter(torch.randn(7))
    scalar = torch.nn.Parameter(torch.tensor(2.0))
    single = torch.nn.Parameter(torch.randn(1))
    loss = ((weight * 3).sum(0) ** 2 * bias).sum() + scalar * 5 + single.sum() * 4
    loss.backward()
    raw = weight.grad.clone()
    changed = znorm_gradients([weight, bias, scalar, single])
    assert changed == 2
    expected = (raw - raw.mean()) / (raw.std(unbiased=False) + ZNORM_EPS)
    assert torch.allclose(weight.grad, expected, atol=1e-6)
    for grad in (weight.grad, bias.grad):
        assert abs(grad.mean().item()) < 1e-5
        assert abs(grad.std(unbiased=False).item() - 1) < 1e-4
    assert scalar.grad.item() == 5.0 and single.grad.item() == 4.0  # skipped


def test_constant_gradient_becomes_zero_not_nan():
    param = torch.nn.Parameter(torch.zeros(4))
    param.grad = torch.full((4,), 3.0)
    znorm_gradients([param])
    assert torch.equal(param.grad, torch.zeros(4))


def test_parameters_without_gradient_are_ignored():
    assert znorm_gradients([torch.nn.Parameter(torch.zeros(3))]) == 0
