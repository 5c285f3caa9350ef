""""Noisy BN": Batch Normalization followed by random, time-varying shift and scale.

Santurkar, Tsipras, Ilyas & Madry (2018), Section 2.1: to test whether Batch
Normalization helps *because* it reduces internal covariate shift, they inject a large,
non-stationary shift after every BN layer. At every training step, for every layer
independently:

    μ ~ U(−0.5, 0.5),   σ ~ U(1, 1.25)                      (one draw per layer)
    m_j ~ U(μ − 0.1, μ + 0.1),   s_j ~ N(σ, 0.1²)           (one draw per unit j)
    a_j ← s_j · a_j + m_j                                   (a = the BN layer's output)

so the distribution each unit feeds forward moves from step to step. In evaluation mode
the layer is plain Batch Normalization (no noise). Noise is redrawn at every forward pass
in training mode (one forward per step in the lab's loops); :func:`hold_noise` freezes
the current draw, e.g. to take several measurements of one step.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

from bnlab.nn import BatchNorm1d, BatchNorm2d

__all__ = ["NoisyBatchNorm1d", "NoisyBatchNorm2d", "apply_noise", "hold_noise", "resample_noise", "sample_noise"]

# the distributions of Santurkar et al. (2018), Section 2.1
MU_RANGE = (-0.5, 0.5)
SIGMA_RANGE = (1.0, 1.25)
SHIFT_HALF_WIDTH = 0.1
SCALE_STD = 0.1


def sample_noise(
    num_features: int, generator: torch.Generator | None = None, dtype=torch.float32, device=None
) -> tuple[Tensor, Tensor]:
    """One step's draw for one layer: per-unit scale ``s`` and shift ``m``, each ``(C,)``."""
    u = torch.rand(2, generator=generator, dtype=torch.float64)
    mu = MU_RANGE[0] + (MU_RANGE[1] - MU_RANGE[0]) * u[0]                      # μ ~ U(−0.5, 0.5)
    sigma = SIGMA_RANGE[0] + (SIGMA_RANGE[1] - SIGMA_RANGE[0]) * u[1]          # σ ~ U(1, 1.25)
    shift = mu + SHIFT_HALF_WIDTH * (2 * torch.rand(num_features, generator=generator, dtype=torch.float64) - 1)
    scale = sigma + SCALE_STD * torch.randn(num_features, generator=generator, dtype=torch.float64)
    return scale.to(dtype=dtype, device=device), shift.to(dtype=dtype, device=device)


def apply_noise(a: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``a ← s · a + m`` with ``s, m`` of shape ``(C,)`` broadcast over ``a``'s dim 1."""
    view = (1, -1) + (1,) * (a.dim() - 2)                                   # (1, C, 1, …)
    return a * scale.view(view) + shift.view(view)


class _NoisyMixin:
    """Adds the noise of Santurkar et al. after the BN layer's output in training mode."""

    def _init_noise(self) -> None:
        self.hold = False  # when True, forward reuses the current draw
        c = self.num_features
        self.register_buffer("noise_scale", torch.ones(c), persistent=False)
        self.register_buffer("noise_shift", torch.zeros(c), persistent=False)

    def resample(self, generator: torch.Generator | None = None) -> None:
        """Draw a new (s, m) for this layer."""
        s, m = sample_noise(self.num_features, generator, self.noise_scale.dtype, self.noise_scale.device)
        self.noise_scale.copy_(s)
        self.noise_shift.copy_(m)

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)  # Alg. 1 (training) / Alg. 2 (evaluation)
        if not self.training:
            return y
        if not self.hold:
            self.resample()
        return apply_noise(y, self.noise_scale.to(y.dtype), self.noise_shift.to(y.dtype))


class NoisyBatchNorm1d(_NoisyMixin, BatchNorm1d):
    """``bnlab.BatchNorm1d`` followed, in training mode, by the noise above."""

    def __init__(self, num_features: int, *args, **kwargs) -> None:
        super().__init__(num_features, *args, **kwargs)
        self._init_noise()


class NoisyBatchNorm2d(_NoisyMixin, BatchNorm2d):
    """``bnlab.BatchNorm2d`` followed, in training mode, by the noise above."""

    def __init__(self, num_features: int, *args, **kwargs) -> None:
        super().__init__(num_features, *args, **kwargs)
        self._init_noise()


def _noisy_layers(model: nn.Module) -> Iterator[_NoisyMixin]:
    return (m for m in model.modules() if isinstance(m, _NoisyMixin))


def resample_noise(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """Draw new noise for every noisy BN layer of ``model``."""
    for layer in _noisy_layers(model):
        layer.resample(generator)


@contextlib.contextmanager
def hold_noise(model: nn.Module) -> Iterator[None]:
    """Within the block, forward passes reuse each layer's current draw."""
    layers = list(_noisy_layers(model))
    previous = [layer.hold for layer in layers]
    for layer in layers:
        layer.hold = True
    try:
        yield
    finally:
        for layer, hold in zip(layers, previous):
            layer.hold = hold
