""""Noisy BN": Batch Normalization followed by random, time-varying, per-activation noise.

Santurkar, Tsipras, Ilyas & Madry (2018), Section 2.1: to test whether Batch
Normalization helps *because* it reduces internal covariate shift, they "perturb each
activation for each sample in the batch using i.i.d. noise sampled from a non-zero mean
and non-unit variance distribution", the distribution itself changing at every step.
Here, at every training step and for every noisy layer independently:

    μ ~ U(−0.5, 0.5),   σ ~ U(1, 1.25)                    (this step's distribution)
    m_i ~ U(μ − 0.1, μ + 0.1),   s_i ~ N(σ, 0.1²)          (i.i.d. for every element i)
    a_i ← s_i · a_i + m_i                                  (a = the BN layer's output)

where an element is one activation of one sample: every entry of the (N, C, H, W) or
(N, C) output gets its own (s_i, m_i). Over steps E[s] = 1.125 and E[m] = 0.

Evaluation mode cannot draw noise (a test prediction must not be random), but the network
was trained on noisy activations: dropping the noise would evaluate a different network
(every BN output 1/1.125 of what training saw). So evaluation applies the noise's
expectation, ``a ← E[s]·a + E[m]``, i.e. E[noise] folded into γ and β
(:func:`noise_expectation`); ``eval_noise="none"`` gives plain BN instead.

A draw is this step's (μ, σ) and a seed for the elementwise values; :func:`hold_noise`
freezes it, so that several forwards of one step (a measurement) see the same noise for
inputs of the same shape. Outside ``hold_noise`` every training forward draws anew, from
the global torch generator (so a seeded run repeats).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

from bnlab.nn import BatchNorm1d, BatchNorm2d

__all__ = [
    "NoisyBatchNorm1d", "NoisyBatchNorm2d", "hold_noise", "noise_expectation", "resample_noise",
    "sample_noise",
]

# the distributions of Santurkar et al. (2018), Section 2.1
MU_RANGE = (-0.5, 0.5)
SIGMA_RANGE = (1.0, 1.25)
SHIFT_HALF_WIDTH = 0.1
SCALE_STD = 0.1


def noise_expectation() -> tuple[float, float]:
    """``(E[s], E[m])`` over steps: (1.125, 0.0)."""
    return sum(SIGMA_RANGE) / 2, sum(MU_RANGE) / 2


def sample_noise(shape: tuple[int, ...], mu: float, sigma: float, seed: int,
                 dtype=torch.float32, device=None) -> tuple[Tensor, Tensor]:
    """Elementwise scale ``s`` and shift ``m`` of ``shape`` for one step's ``(μ, σ)``.

    ``s_i ~ N(σ, 0.1²)``, ``m_i ~ U(μ − 0.1, μ + 0.1)``, i.i.d., a pure function of ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32  # drawn at ≥ float32 precision
    scale = sigma + SCALE_STD * torch.randn(shape, generator=g, dtype=work)
    shift = mu + SHIFT_HALF_WIDTH * (2 * torch.rand(shape, generator=g, dtype=work) - 1)
    return scale.to(dtype=dtype, device=device), shift.to(dtype=dtype, device=device)


def _draw_step(generator: torch.Generator | None = None) -> tuple[float, float, int]:
    """This step's ``(μ, σ)`` and the seed of its elementwise values."""
    u = torch.rand(2, generator=generator, dtype=torch.float64)
    mu = MU_RANGE[0] + (MU_RANGE[1] - MU_RANGE[0]) * float(u[0])           # μ ~ U(−0.5, 0.5)
    sigma = SIGMA_RANGE[0] + (SIGMA_RANGE[1] - SIGMA_RANGE[0]) * float(u[1])  # σ ~ U(1, 1.25)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return mu, sigma, seed


class _NoisyMixin:
    """Adds the noise of Santurkar et al. after the BN layer's output."""

    def _init_noise(self, eval_noise: str) -> None:
        if eval_noise not in ("expectation", "none"):
            raise ValueError(f"eval_noise must be 'expectation' or 'none', got {eval_noise!r}")
        self.eval_noise = eval_noise
        self.hold = False  # when True, forward reuses the current draw
        self.draw: tuple[float, float, int] | None = None

    def resample(self, generator: torch.Generator | None = None) -> None:
        """Draw this layer's noise for a new step."""
        self.draw = _draw_step(generator)

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)  # Alg. 1 (training) / Alg. 2 (evaluation)
        if not self.training:
            if self.eval_noise == "none":
                return y
            e_s, e_m = noise_expectation()
            return y * e_s + e_m                       # E[s]·y + E[m]
        if self.draw is None or not self.hold:
            self.resample()
        mu, sigma, seed = self.draw
        s, m = sample_noise(tuple(y.shape), mu, sigma, seed, y.dtype, y.device)  # each (N, C, ...)
        return y * s + m

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eval_noise={self.eval_noise!r}"


class NoisyBatchNorm1d(_NoisyMixin, BatchNorm1d):
    """``bnlab.BatchNorm1d`` followed by the noise above (its expectation in eval mode)."""

    def __init__(self, num_features: int, *args, eval_noise: str = "expectation", **kwargs) -> None:
        super().__init__(num_features, *args, **kwargs)
        self._init_noise(eval_noise)


class NoisyBatchNorm2d(_NoisyMixin, BatchNorm2d):
    """``bnlab.BatchNorm2d`` followed by the noise above (its expectation in eval mode)."""

    def __init__(self, num_features: int, *args, eval_noise: str = "expectation", **kwargs) -> None:
        super().__init__(num_features, *args, **kwargs)
        self._init_noise(eval_noise)


def _noisy_layers(model: nn.Module) -> Iterator[_NoisyMixin]:
    return (m for m in model.modules() if isinstance(m, _NoisyMixin))


def resample_noise(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """Draw new noise for every noisy BN layer of ``model``."""
    for layer in _noisy_layers(model):
        layer.resample(generator)


@contextlib.contextmanager
def hold_noise(model: nn.Module) -> Iterator[None]:
    """Within the block, training forwards reuse each layer's current draw."""
    layers = list(_noisy_layers(model))
    previous = [layer.hold for layer in layers]
    for layer in layers:
        layer.hold = True
    try:
        yield
    finally:
        for layer, hold in zip(layers, previous):
            layer.hold = hold
