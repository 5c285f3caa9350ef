"""Weight initialisation shared by the claims' networks."""
from __future__ import annotations

from torch import nn

__all__ = ["kaiming_init"]


def kaiming_init(model: nn.Module) -> nn.Module:
    """He et al. (2015) normal init, ``W ~ N(0, 2 / fan_in)``, zero biases, for every conv/linear layer.

    PyTorch's default (uniform, gain 1/√3) shrinks the signal by ~√6 per ReLU layer, so a
    deep network without BN starts with vanishing activations and plain SGD barely moves it;
    with this init both networks of a with/without-BN comparison start trainable (fair test).
    Returns ``model`` (changed in place).
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model
