"""Small convolutional classifiers: the source document's ``Net``, a VGG-style CNN, and the
claims' two-conv CNN (:func:`small_cnn`)."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .norm import NormFactory

__all__ = ["SeedNet", "SmallVGG", "conv_norm_relu", "small_cnn"]

_ACT = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}


def conv_norm_relu(cin: int, cout: int, norm_layer: NormFactory | None, kernel: int = 3,
                   stride: int = 1, padding: int | None = None) -> nn.Sequential:
    """Conv → norm → ReLU; the conv has no bias when a norm layer follows (β replaces it)."""
    padding = kernel // 2 if padding is None else padding
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=norm_layer is None)
    ]
    if norm_layer is not None:
        layers.append(norm_layer(cout))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SeedNet(nn.Module):
    """The source document's ``Net`` (Conv2d 3→64, BN, ReLU), completed into a classifier.

    The sample stops at ``# ...`` after its first block; the completion adds a 2×2 max
    pool, a second conv block 64→128, global average pooling and a linear classifier.
    Attribute names ``conv1`` / ``batch_norm1`` / ``relu`` follow the sample.

    Shape: (N, in_channels, H, W) → (N, num_classes) for any H, W ≥ 2.
    """

    def __init__(self, norm_layer: NormFactory | None = None, in_channels: int = 3,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1, bias=norm_layer is None)
        self.batch_norm1 = norm_layer(64) if norm_layer is not None else nn.Identity()
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.block2 = conv_norm_relu(64, 128, norm_layer)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.batch_norm1(self.conv1(x)))  # (N, 64, H, W), as in the sample
        x = self.block2(self.pool(x))                   # (N, 128, H/2, W/2)
        return self.fc(self.gap(x).flatten(1))          # (N, num_classes)


class SmallVGG(nn.Module):
    """VGG-style CNN: stages of 3×3 conv-norm-ReLU blocks, each stage ending in a 2×2 max pool.

    Args:
        widths: channels per stage; each stage has ``convs_per_stage`` blocks.

    Shape: (N, in_channels, H, W) → (N, num_classes); H, W divisible by 2**len(widths).
    """

    def __init__(self, norm_layer: NormFactory | None = None, in_channels: int = 3,
                 num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128),
                 convs_per_stage: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for w in widths:
            for _ in range(convs_per_stage):
                layers.append(conv_norm_relu(cin, w, norm_layer))
                cin = w
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.gap(self.features(x)).flatten(1))


def small_cnn(norm_layer: NormFactory | None, activation: str = "relu", dropout: float = 0.0,
              widths: Sequence[int] = (16, 32), hidden: int = 64, in_shape: Sequence[int] = (1, 28, 28),
              num_classes: int = 10, fc_norm: NormFactory | None = None) -> nn.Sequential:
    """(Conv5×5 → norm → act → max-pool 2) per width → FC → [fc_norm] → act → dropout → FC.

    Where the norm sits: after every convolution, on (N, C, H, W) feature maps; the hidden FC
    layer gets one only when ``fc_norm`` is given (a 1-D norm over its (N, hidden) output, e.g.
    ``bnlab.BatchNorm1d`` for "BN everywhere" at a batch of tens). By default it has none: its
    features normalized over the batch alone map, at batch 2, every unit's two values to ±γ
    (whatever the input), and a per-sample norm (GroupNorm, LayerNorm) would normalize a
    handful of values. A conv or linear layer has no bias when a norm follows (β takes its
    place, paper Sec. 3.2).

    Shape: ``(N, C, H, W) → (N, num_classes)``; H, W divisible by ``2 ** len(widths)``.
    """
    if activation not in _ACT:
        raise ValueError(f"activation must be one of {sorted(_ACT)}, got {activation!r}")
    act = _ACT[activation]
    c, h, w = in_shape
    layers: list[nn.Module] = []
    for width in widths:
        layers.append(nn.Conv2d(c, width, 5, padding=2, bias=norm_layer is None))  # (N, width, h, w)
        if norm_layer is not None:
            layers.append(norm_layer(width))
        layers += [act(), nn.MaxPool2d(2)]
        c, h, w = width, h // 2, w // 2                                            # (N, width, h/2, w/2)
    layers += [nn.Flatten(), nn.Linear(c * h * w, hidden, bias=fc_norm is None)]   # (N, hidden)
    if fc_norm is not None:
        layers.append(fc_norm(hidden))
    layers.append(act())
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, num_classes))                                  # (N, num_classes)
    return nn.Sequential(*layers)
