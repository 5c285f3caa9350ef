"""BN-Inception: the ImageNet network of the paper's appendix (Figure 5).

GoogLeNet (Szegedy et al. 2014) with Batch Normalization after every convolution and,
per the appendix, "the 5×5 convolutional layers are replaced by two consecutive layers
of 3×3 convolutions with up to 128 filters"; the 28×28 → 14×14 and 14×14 → 7×7
reductions happen inside modules 3c and 4e (stride-2 3×3 and double-3×3 branches next
to a max pool passed through without projection); average or max pooling in the pool
branch as the table says. Widths per module (the appendix table's columns)::

    name  #1×1  #3×3red #3×3  #d3×3red #d3×3  pool      (stride)
    3a      64     64     64      64      96   avg+32
    3b      64     64     96      64      96   avg+64
    3c       0    128    160      64      96   max+pass  (2)
    4a     224     64     96      96     128   avg+128
    4b     192     96    128      96     128   avg+128
    4c     160    128    160     128     160   avg+128
    4d      96    128    192     160     192   avg+128
    4e       0    128    192     192     256   max+pass  (2)
    5a     352    192    320     160     224   avg+128
    5b     352    192    320     192     224   max+128

The table's "output size" column says 576 channels after 4c and 4d and 1024 after 4e,
but its branch widths add up to 608, 608 and 1056 (160+160+160+128 = 608,
0+192+256+608 = 1056); this module follows the branch widths (the only consistent
reading, and the one public BN-Inception weights use). Parameter count for 1000 classes:
see :func:`bn_inception_param_report`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .convnets import conv_norm_relu
from .norm import NormFactory

__all__ = ["BNInception", "InceptionModule", "INCEPTION_TABLE", "PAPER_PARAMS"]

#: (name, #1×1, #3×3 reduce, #3×3, double #3×3 reduce, double #3×3, pool, proj, stride)
INCEPTION_TABLE = (
    ("3a", 64, 64, 64, 64, 96, "avg", 32, 1),
    ("3b", 64, 64, 96, 64, 96, "avg", 64, 1),
    ("3c", 0, 128, 160, 64, 96, "max", 0, 2),
    ("4a", 224, 64, 96, 96, 128, "avg", 128, 1),
    ("4b", 192, 96, 128, 96, 128, "avg", 128, 1),
    ("4c", 160, 128, 160, 128, 160, "avg", 128, 1),
    ("4d", 96, 128, 192, 160, 192, "avg", 128, 1),
    ("4e", 0, 128, 192, 192, 256, "max", 0, 2),
    ("5a", 352, 192, 320, 160, 224, "avg", 128, 1),
    ("5b", 352, 192, 320, 192, 224, "max", 128, 1),
)

#: "The network contains 13.6·10⁶ parameters" (appendix).
PAPER_PARAMS = 13.6e6


class InceptionModule(nn.Module):
    """Four parallel branches concatenated on channels: 1×1 | 1×1→3×3 | 1×1→3×3→3×3 | pool(→1×1).

    A branch width of 0 drops the 1×1 branch; ``proj == 0`` passes the pooled input
    through unprojected. With ``stride == 2`` the last conv of the two 3×3 branches and
    the pool have stride 2 (grid reduction).
    """

    def __init__(self, cin: int, n1: int, n3r: int, n3: int, nd3r: int, nd3: int,
                 pool: str, proj: int, stride: int, norm_layer: NormFactory | None) -> None:
        super().__init__()
        self.b1 = conv_norm_relu(cin, n1, norm_layer, kernel=1) if n1 else None
        self.b3 = nn.Sequential(
            conv_norm_relu(cin, n3r, norm_layer, kernel=1),
            conv_norm_relu(n3r, n3, norm_layer, stride=stride),
        )
        self.bd3 = nn.Sequential(
            conv_norm_relu(cin, nd3r, norm_layer, kernel=1),
            conv_norm_relu(nd3r, nd3, norm_layer),
            conv_norm_relu(nd3, nd3, norm_layer, stride=stride),
        )
        pool_cls = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
        pool_layer = (
            pool_cls(3, stride=2, ceil_mode=True) if stride == 2 else pool_cls(3, stride=1, padding=1)
        )
        self.bpool = nn.Sequential(pool_layer, *(
            [conv_norm_relu(cin, proj, norm_layer, kernel=1)] if proj else []
        ))
        self.out_channels = n1 + n3 + nd3 + (proj if proj else cin)

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.b3(x), self.bd3(x), self.bpool(x)]
        if self.b1 is not None:
            branches.insert(0, self.b1(x))
        return torch.cat(branches, dim=1)  # (N, out_channels, H', W')


class BNInception(nn.Module):
    """BN-Inception for 224×224 input (N, 3, 224, 224) → logits (N, num_classes)."""

    def __init__(self, norm_layer: NormFactory | None = None, in_channels: int = 3,
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            conv_norm_relu(in_channels, 64, norm_layer, kernel=7, stride=2),  # 112×112×64
            nn.MaxPool2d(3, stride=2, ceil_mode=True),                        # 56×56×64
            conv_norm_relu(64, 64, norm_layer, kernel=1),                     # 3×3 reduce
            conv_norm_relu(64, 192, norm_layer),                              # 56×56×192
            nn.MaxPool2d(3, stride=2, ceil_mode=True),                        # 28×28×192
        )
        modules, cin = {}, 192
        for name, *widths in INCEPTION_TABLE:
            m = InceptionModule(cin, *widths, norm_layer=norm_layer)
            modules[name] = m
            cin = m.out_channels
        self.inception = nn.ModuleDict(modules)  # 28×28 → 14×14 (3c) → 7×7 (4e), 1024 ch
        self.pool = nn.AdaptiveAvgPool2d(1)      # the table's 7×7 average pool
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for m in self.inception.values():
            x = m(x)
        return self.fc(self.pool(x).flatten(1))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
