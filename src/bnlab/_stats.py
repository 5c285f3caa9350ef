"""Per-channel statistics for Batch Normalization.

Everything here is a pure function of tensors. Shapes follow PyTorch's convention:
the channel axis is dim 1 and every other axis is reduced, so an input of shape
``(N, C, *)`` gives per-channel statistics of shape ``(C,)`` over ``m = N * prod(*)``
values each (the paper's mini-batch ``B = {x_1..m}``, with convolutional positions
counted as batch members, Section 3.2).

Numerics: sums accumulate in float64 for float32/float64 input (float32 for half
types is upcast first), the variance is a *two-pass* estimate with a compensation
term (never ``E[x^2] - E[x]^2``, which loses every digit on data with a large
offset), and Chan et al.'s formula merges partial results exactly.
"""
from __future__ import annotations

import torch

__all__ = [
    "FLOATING",
    "reduce_dims",
    "count_per_channel",
    "compute_dtype",
    "stats_dtype",
    "channel_mean_var",
    "merge_mean_m2",
    "unbiased_from_biased",
    "broadcast_shape",
]


# the floating dtypes bnlab computes in (inputs, parameters, statistics)
FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    """Dimensions reduced for per-channel statistics: all but dim 1."""
    return (0,) + tuple(range(2, x.dim()))


def count_per_channel(x: torch.Tensor) -> int:
    """Number of values ``m`` that share one channel: ``N * prod(spatial)``."""
    return x.numel() // x.shape[1] if x.shape[1] else 0


def broadcast_shape(x: torch.Tensor) -> tuple[int, ...]:
    """Shape that broadcasts a ``(C,)`` vector against ``x``: ``(1, C, 1, ..., 1)``."""
    return (1, x.shape[1]) + (1,) * (x.dim() - 2)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Element-wise math dtype: float32 for half types, the input dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of saved mean / invstd: float64 for float64 input, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def channel_mean_var(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and *biased* variance of ``x`` (Alg. 1, lines 1-2).

    μ_B = (1/m) Σ x_i  and  σ²_B = (1/m) Σ (x_i − μ_B)².

    The sums accumulate in float64; the second pass subtracts the rounded mean and
    removes the rounding with the compensation term ``(Σ d)² / m`` (corrected
    two-pass algorithm, Chan, Golub & LeVeque 1983). Returns float64 tensors of
    shape ``(C,)``; an empty channel gives NaN, like ``torch.var_mean``.
    """
    dims = reduce_dims(x)
    m = count_per_channel(x)
    xc = x.to(compute_dtype(x.dtype))
    # Alg. 1: μ_B = (1/m) Σ x_i, accumulated in float64            # (C,)
    mean = xc.sum(dim=dims, dtype=torch.float64) / m
    # centred values in the compute dtype; the rounding of μ_B to that dtype
    # is removed by the compensation term below                     # (N, C, *)
    d = xc - mean.to(xc.dtype).view(broadcast_shape(x))
    s1 = d.sum(dim=dims, dtype=torch.float64)
    s2 = (d * d).sum(dim=dims, dtype=torch.float64)
    # Alg. 1: σ²_B = (1/m) Σ (x_i − μ_B)²  (compensated two-pass)
    var = (s2 - s1 * s1 / m) / m
    mean = mean.to(xc.dtype).to(torch.float64) + s1 / m
    return mean, var.clamp_min(0.0)


def merge_mean_m2(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Chan et al.'s parallel merge of two partial (count, mean, M2) summaries.

    δ = μ_b − μ_a;  n = n_a + n_b;  μ = μ_a + δ·n_b/n;  M2 = M2_a + M2_b + δ²·n_a·n_b/n.
    Empty parts (count 0) contribute nothing. Works element-wise on tensors.
    """
    count = count_a + count_b
    safe = torch.where(count > 0, count, torch.ones_like(count))
    delta = mean_b - mean_a
    mean = torch.where(count > 0, mean_a + delta * (count_b / safe), mean_a)
    m2 = m2_a + m2_b + delta * delta * (count_a * count_b / safe)
    return count, mean, m2


def unbiased_from_biased(var: torch.Tensor, m: int) -> torch.Tensor:
    """Alg. 2's unbiased estimate: Var[x] = m/(m−1) · σ²_B (``var`` itself if m ≤ 1)."""
    return var * (m / (m - 1)) if m > 1 else var
