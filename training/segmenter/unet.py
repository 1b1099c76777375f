"""A small 2-D UNet built for CPU int8: plain 3x3 conv + BN + ReLU, additive skips, no exotic ops.

Why this shape: every trunk op (Conv, ReLU, Add, nearest Resize) has a fused QDQ int8 kernel in ONNX
Runtime's CPU provider, BatchNorm folds into the convolutions at export, and channel counts are multiples of
16. Additive skips (LinkNet-style) instead of concatenation keep the decoder cheap and avoid Concat, whose
inputs would otherwise have to share one quantisation scale. A stride-2 stem does the full-resolution work
once, and the network answers on that coarse grid: the caller resizes probabilities to the original image
anyway (it has to undo the letterbox), so an in-graph upsampling would be a float tail that int8 cannot speed
up and that the caller immediately resamples again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU: the one building block of the network."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class OrganUNet(nn.Module):
    """Input [B,1,H,W] normalised image → logits [B,num_classes,H/stem_stride,W/stem_stride]."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (16, 32, 64, 64), stem_stride: int = 2):
        super().__init__()
        self.stem_stride = stem_stride
        self.stem = nn.Sequential(conv_bn_relu(1, widths[0], stem_stride), conv_bn_relu(widths[0], widths[0]))
        self.encoder = nn.ModuleList(
            nn.Sequential(conv_bn_relu(widths[i], widths[i + 1], 2), conv_bn_relu(widths[i + 1], widths[i + 1]))
            for i in range(len(widths) - 1)
        )
        # 1x1 projection at the coarse level, then nearest 2x upsampling: both have int8 kernels in ONNX
        # Runtime, whereas ConvTranspose stays float and would split the quantised graph.
        self.project = nn.ModuleList(
            nn.Conv2d(widths[i + 1], widths[i], 1) for i in reversed(range(len(widths) - 1))
        )
        self.decoder = nn.ModuleList(conv_bn_relu(widths[i], widths[i]) for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits at 1/stem_stride of the input resolution."""
        x = self.stem(image)
        skips = [x]
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck is x itself
        for project, block in zip(self.project, self.decoder):
            x = block(F.interpolate(project(x), scale_factor=2.0, mode="nearest") + skips.pop())
        return self.head(x)


class SegmentationHead(nn.Module):
    """Wraps the UNet for export: outputs both ``probabilities`` (softmax) and ``labels`` (argmax, uint8).

    A service usually wants the label map (small, exact); probabilities let it resize back to the original
    image smoothly or threshold confidence.
    """

    def __init__(self, unet: OrganUNet):
        super().__init__()
        self.unet = unet

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.unet(image)
        # Written out rather than torch.softmax: ORT's Softmax on axis 1 of NCHW transposes internally and
        # was a quarter of the whole int8 runtime; ReduceMax/Exp/ReduceSum/Div stream over memory once.
        exp = torch.exp(logits - logits.amax(dim=1, keepdim=True))
        probabilities = exp / exp.sum(dim=1, keepdim=True)
        labels = torch.argmax(probabilities, dim=1).to(torch.uint8)
        return probabilities, labels
