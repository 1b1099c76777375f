"""ZNorm (arXiv 2408.01215): standardise each parameter's gradient after backward, before the optimiser.

ĝ = (g − mean(g)) / (std(g) + 1e-8), with the population std over all entries of that one tensor. Under
Adam, ĝ is what feeds the moment estimates. Call it after gradients are synchronised (``accelerate``'s
backward has already all-reduced them), so every data-parallel worker applies the same update.
"""

from __future__ import annotations

from typing import Iterable

import torch

ZNORM_EPS = 1e-8  # the sibling paper's epsilon: keeps a constant gradient tensor from dividing by zero


@torch.no_grad()
def znorm_gradients(parameters: Iterable[torch.nn.Parameter]) -> int:
    """Standardise ``p.grad`` in place for every parameter with a gradient; returns how many were changed.

    Scalars and 1-element tensors are skipped: their mean is the value itself, so centring would zero the
    gradient and the parameter would never train (and a std over one entry is meaningless).
    Note that entries with zero gradient (e.g. embedding rows of tokens absent from the batch) receive
    ``-mean/std`` like any other entry; that is what ZNorm specifies.
    """
    changed = 0
    for param in parameters:
        grad = param.grad
        if grad is None or grad.numel() <= 1:
            continue
        flat = grad.float()
        mean = flat.mean()
        std = flat.std(unbiased=False)
        grad.copy_(((flat - mean) / (std + ZNORM_EPS)).to(grad.dtype))
        changed += 1
    return changed
