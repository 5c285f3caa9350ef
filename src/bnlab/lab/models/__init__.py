"""The lab's models, each taking a norm-layer factory (``norm_layer``) or ``None``.

``build_model(name, norm=..., in_shape=..., num_classes=...)`` builds one by name:

=================  ==========================================================  =====
name               what                                                        norm
=================  ==========================================================  =====
``mnist-mlp``      the paper's MNIST net, 784-100-100-100-10 sigmoid (Fig. 1)  1-D
``seed-net``       the source document's ``Net`` completed into a classifier   2-D
``vgg-small``      a small VGG-style CNN (3 stages of two 3×3 convs)           2-D
``bn-inception``   BN-Inception of the paper's appendix (224×224 input)        2-D
=================  ==========================================================  =====
"""
from __future__ import annotations

import math
from typing import Callable

from torch import nn

from .convnets import SeedNet, SmallVGG, small_cnn
from .inception import BNInception, count_params
from .init import kaiming_init
from .mlp import MnistMLP
from .naming import layer_labels
from .noisy import NoisyBatchNorm1d, NoisyBatchNorm2d, hold_noise, resample_noise
from .norm import NormFactory, norm_factory, norm_names

__all__ = [
    "MnistMLP", "SeedNet", "SmallVGG", "BNInception",
    "build_model", "model_names", "norm_factory", "norm_names", "count_params", "NormFactory",
    "small_cnn", "kaiming_init", "layer_labels",
    "NoisyBatchNorm1d", "NoisyBatchNorm2d", "hold_noise", "resample_noise",
]


def _mlp(norm, in_shape, num_classes):
    return MnistMLP(norm_factory(norm, 1), in_features=math.prod(in_shape), num_classes=num_classes)


def _conv(cls: type) -> Callable:
    def build(norm, in_shape, num_classes):
        return cls(norm_factory(norm, 2), in_channels=in_shape[0], num_classes=num_classes)
    return build


_MODELS: dict[str, Callable[..., nn.Module]] = {
    "mnist-mlp": _mlp,
    "seed-net": _conv(SeedNet),
    "vgg-small": _conv(SmallVGG),
    "bn-inception": _conv(BNInception),
}


def model_names() -> list[str]:
    return list(_MODELS)


def build_model(name: str, norm: str | NormFactory | None = "batch",
                in_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10) -> nn.Module:
    """Build model ``name`` for inputs of shape ``in_shape`` (C, H, W) and ``num_classes``."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {model_names()}")
    return _MODELS[name](norm, tuple(in_shape), num_classes)
