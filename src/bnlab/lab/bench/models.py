"""The networks of the end-to-end part of ``bnlab bench``.

``resnet18_style``: ResNet-18's layout (He et al., 2016) — a 3×3 stem, four stages of
two basic blocks (widths w, 2w, 4w, 8w, stride 2 from the second stage on), global
average pooling, a linear classifier — for small images (CIFAR-style stem, no max-pool).
It holds exactly 20 BatchNorm layers (stem 1, blocks 16, projections 3), so it is also the
"20-BN conv net" of the batch-1 latency. Each block's first BN → ReLU pair sits in an
``nn.Sequential``, so ``bnlab.surgery.fuse_act.fuse_bn_act`` can fuse it.
"""
from __future__ import annotations

import torch
from torch import nn

from ...nn.batchnorm import _BatchNorm as _BnlabBatchNorm

__all__ = ["BasicBlock", "resnet18_style", "count_batchnorms"]


class BasicBlock(nn.Module):
    """y = ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return torch.relu(self.branch(x) + self.shortcut(x))


def resnet18_style(width: int = 64, classes: int = 10) -> nn.Sequential:
    """ResNet-18 for small images with first-stage ``width`` (64 is ResNet-18's)."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    cin = width
    for i, mult in enumerate((1, 2, 4, 8)):
        cout = width * mult
        layers += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm layers, torch's or bnlab's."""
    kinds = (nn.modules.batchnorm._BatchNorm, _BnlabBatchNorm)
    return sum(isinstance(m, kinds) for m in model.modules())
