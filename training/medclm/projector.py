"""Data-dependent initialisation of LLaVA's projector after the vision warm-up.

Measured on the tiny preset after warm-up: the patch features LLaVA feeds the projector (CLIP layer -2,
before any final norm) have norm ~39, almost all of it a component shared by every patch of every image;
through a default-initialised projector the image tokens reached the language model with norm ~270
(text embeddings: ~0.35) and their image-to-image variation was ~0.3% of that. After Llama's RMSNorm the
image tokens were nearly constant, and the language model learnt to ignore them (its loss was the same
with the wrong image or a black one). Standardising the features inside the first projector layer
(bias = -W·mean, weights scaled by 1/std per input dimension) and giving the image tokens the scale of the
text embeddings fixes that with no change to the architecture: the exported model is still plain LLaVA.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def calibrate_projector(projector: torch.nn.Module, features: torch.Tensor, token_norm: float,
                        generator: torch.Generator | None = None) -> dict:
    """Re-initialise ``projector`` (linear_1 → GELU → linear_2) from patch ``features`` (N, P, H).

    linear_1 becomes W·(x − μ)/σ with fresh weights of variance 1/H, so its pre-activations are ~N(0, 1)
    and vary from patch to patch; linear_2 gets fresh weights scaled so that output tokens have norm
    ``token_norm`` (the text embeddings' mean norm). Returns the before/after output norms and the share of
    output variance that differs between patches, for the training log.
    """
    flat = features.reshape(-1, features.shape[-1]).float()
    before = projector(flat.to(projector.linear_1.weight.dtype)).float()
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)
    hidden, width = projector.linear_1.weight.shape
    w1 = torch.randn(hidden, width, generator=generator) / math.sqrt(width) / std  # scale each input dim
    projector.linear_1.weight.copy_(w1.to(projector.linear_1.weight.dtype))
    projector.linear_1.bias.copy_((-w1 @ mean).to(projector.linear_1.bias.dtype))
    out_dim = projector.linear_2.weight.shape[0]
    w2 = torch.randn(out_dim, hidden, generator=generator) / math.sqrt(hidden)
    projector.linear_2.weight.copy_(w2.to(projector.linear_2.weight.dtype))
    projector.linear_2.bias.zero_()
    scale = token_norm / projector(flat.to(projector.linear_1.weight.dtype)).float().norm(dim=-1).mean()
    projector.linear_2.weight.mul_(scale)
    after = projector(flat.to(projector.linear_1.weight.dtype)).float()

    def varying_share(out: torch.Tensor) -> float:
        total = out.pow(2).sum(-1).mean()
        return float((out - out.mean(0)).pow(2).sum(-1).mean() / total.clamp_min(1e-12))

    return {"norm_before": round(float(before.norm(dim=-1).mean()), 3),
            "norm_after": round(float(after.norm(dim=-1).mean()), 3),
            "varying_share_before": round(varying_share(before), 4),
            "varying_share_after": round(varying_share(after), 4)}
