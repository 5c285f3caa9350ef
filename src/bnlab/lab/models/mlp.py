"""The MNIST network of the paper's Section 4.1 (Figure 1).

"a simple fully-connected network with 3 hidden layers of 100 activations each; each
hidden layer computes y = g(Wu + b) with sigmoid nonlinearity, and the weights W
initialized to small random Gaussian values" (Ioffe & Szegedy 2015, Sec. 4.1). The
Gaussian here is N(0, 0.01²). With Batch Normalization the transform is
y = g(BN(Wu)): the bias b is dropped because BN's β replaces it (Sec. 3.2).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .norm import NormFactory

__all__ = ["MnistMLP"]


class MnistMLP(nn.Module):
    """784-100-100-100-10 sigmoid MLP, optionally with a norm layer before every sigmoid.

    Args:
        norm_layer: ``num_features -> module`` (e.g. ``bnlab.BatchNorm1d``) or ``None``.
        in_features, hidden, num_classes: layer widths (paper: 784, (100, 100, 100), 10).
        init_std: standard deviation of the Gaussian initial weights (0.01); biases start at 0.

    Shape: input (N, 784) or (N, 1, 28, 28) → logits (N, 10).
    """

    def __init__(self, norm_layer: NormFactory | None = None, in_features: int = 784,
                 hidden: tuple[int, ...] = (100, 100, 100), num_classes: int = 10,
                 init_std: float = 0.01) -> None:
        super().__init__()
        widths = (in_features, *hidden)
        use_bias = norm_layer is None
        self.linears = nn.ModuleList(
            nn.Linear(a, b, bias=use_bias) for a, b in zip(widths[:-1], widths[1:])
        )
        self.norms = nn.ModuleList(
            norm_layer(b) if norm_layer is not None else nn.Identity() for b in hidden
        )
        self.head = nn.Linear(hidden[-1], num_classes)
        with torch.no_grad():
            for lin in [*self.linears, self.head]:
                lin.weight.normal_(0.0, init_std)
                if lin.bias is not None:
                    lin.bias.zero_()

    def forward_with_preacts(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits and, per hidden layer, the input to its sigmoids (N, 100)."""
        h = x.flatten(1)  # (N, 784)
        preacts = []
        for lin, norm in zip(self.linears, self.norms):
            z = norm(lin(h))  # Wu (+ b), or BN(Wu): the sigmoid's input, (N, 100)
            preacts.append(z)
            h = torch.sigmoid(z)
        return self.head(h), preacts

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_preacts(x)[0]
