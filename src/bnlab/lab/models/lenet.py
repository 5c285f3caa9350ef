"""LeNet as d2l.ai's Batch Normalization chapter trains it on Fashion-MNIST (28×28 grey input).

d2l's ``BNLeNet`` puts a BN layer after every convolution and every hidden linear layer,
before the sigmoid (Ioffe & Szegedy 2015, Sec. 3.2: BN(Wu) then the nonlinearity)::

    conv 5×5, 6 ch   → BN(6)   → sigmoid → avg-pool 2   (N, 6, 12, 12)
    conv 5×5, 16 ch  → BN(16)  → sigmoid → avg-pool 2   (N, 16, 4, 4)
    flatten → linear 256→120 → BN(120) → sigmoid
            → linear 120→84  → BN(84)  → sigmoid → linear 84→10

Without a norm layer the same network keeps its biases (the "sigmoid LeNet without BN").
Weights start Xavier-uniform (d2l's ``train_ch6`` applies ``xavier_uniform_`` to every
Conv2d/Linear weight); biases keep PyTorch's default initialization.
"""
from __future__ import annotations

from torch import Tensor, nn

from .norm import NormFactory

__all__ = ["LeNet"]


class LeNet(nn.Module):
    """d2l's (BN-)LeNet for 1×28×28 inputs.

    Args:
        norm2d: ``channels -> module`` after each convolution (e.g. ``bnlab.BatchNorm2d``), or None.
        norm1d: ``features -> module`` after each hidden linear layer, or None.
        num_classes: outputs (10).

    Shape: (N, 1, 28, 28) → logits (N, num_classes).
    """

    def __init__(self, norm2d: NormFactory | None = None, norm1d: NormFactory | None = None,
                 num_classes: int = 10) -> None:
        super().__init__()

        def block(layer: nn.Module, norm: NormFactory | None, width: int) -> list[nn.Module]:
            return [layer, *([norm(width)] if norm is not None else []), nn.Sigmoid()]

        self.net = nn.Sequential(
            *block(nn.Conv2d(1, 6, 5, bias=norm2d is None), norm2d, 6),
            nn.AvgPool2d(2, 2),                                        # (N, 6, 12, 12)
            *block(nn.Conv2d(6, 16, 5, bias=norm2d is None), norm2d, 16),
            nn.AvgPool2d(2, 2), nn.Flatten(),                          # (N, 256)
            *block(nn.Linear(256, 120, bias=norm1d is None), norm1d, 120),
            *block(nn.Linear(120, 84, bias=norm1d is None), norm1d, 84),
            nn.Linear(84, num_classes),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
