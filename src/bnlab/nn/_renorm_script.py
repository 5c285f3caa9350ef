"""Batch Renorm's training step in TorchScript-compilable form (Ioffe, 2017).

Scripted :class:`bnlab.BatchRenorm2d` (``_scripted_forward``) and the bare-layer
``torch.fx`` graph (:func:`bnlab.nn.renorm.graph_batch_renorm`) run these functions.
Each repeats, op for op, the eager function it names, which TorchScript cannot
compile (tuple-valued reduce dims, ``@torch.no_grad`` wrappers, a Python-float
schedule); ``tests/toolchain/test_torchscript.py`` checks the scripted step against
the eager one bit for bit (float64, float32, half types), over the whole schedule.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["ramp_tensor", "script_count", "script_stats_dtype", "script_mean_var", "script_limits",
           "script_correction", "script_track"]


def ramp_tensor(step: Tensor, start: int, end: int) -> Tensor:
    """:func:`bnlab.nn.renorm._ramp` on a 0-d tensor step, without data-dependent branches."""
    t = step.to(torch.float64)
    if end <= start:
        return (t >= start).to(torch.float64)
    return ((t - start) / (end - start)).clamp(0.0, 1.0)


def script_count(x: Tensor) -> int:
    """:func:`bnlab._stats.count_per_channel`: m = N·∏spatial."""
    c = x.shape[1]
    return x.numel() // c if c > 0 else 0


def script_stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """:func:`bnlab._stats.stats_dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def script_mean_var(x: Tensor) -> Tuple[Tensor, Tensor]:
    """:func:`bnlab._stats.channel_mean_var`: μ_B and the biased σ²_B, compensated two-pass, float64 (C,)."""
    dims: List[int] = [0] + [i for i in range(2, x.dim())]
    shape: List[int] = [1, x.shape[1]] + [1 for _ in range(2, x.dim())]         # (1, C, 1, ...)
    m = script_count(x)
    cd = torch.float32 if (x.dtype == torch.float16 or x.dtype == torch.bfloat16) else x.dtype
    xc = x.to(cd)
    mean = xc.sum(dim=dims, dtype=torch.float64) / m                # Alg. 1: μ_B = (1/m) Σ x_i
    d = xc - mean.to(xc.dtype).view(shape)                           # (N, C, *)
    s1 = d.sum(dim=dims, dtype=torch.float64)
    s2 = (d * d).sum(dim=dims, dtype=torch.float64)
    var = (s2 - s1 * s1 / m) / m                                     # Alg. 1: σ²_B (compensated)
    mean = mean.to(xc.dtype).to(torch.float64) + s1 / m
    return mean, var.clamp_min(0.0)


def script_limits(step: Tensor, schedule: Tuple[float, float, int, int, int]) -> Tuple[Tensor, Tensor]:
    """:meth:`bnlab.nn.renorm.RenormSchedule.limits` at a 0-d tensor ``step``: float64 0-d tensors.

    r_max(t) = 1 + (r_max − 1)·ramp(t; warmup, r_max_steps),  d_max(t) = d_max·ramp(t; warmup, d_max_steps).
    """
    r_max, d_max, warmup, r_steps, d_steps = schedule
    r = 1.0 + (r_max - 1.0) * ramp_tensor(step, warmup, r_steps)
    d = d_max * ramp_tensor(step, warmup, d_steps)
    return r, d


def script_correction(mean_b: Tensor, var_b: Tensor, running_mean: Tensor, running_var: Tensor, eps: float,
                       r_max: Tensor, d_max: Tensor) -> Tuple[Tensor, Tensor]:
    """:func:`bnlab.functional.renorm_correction`, float64 (C,) each.

    r = clip(σ_B/σ, 1/r_max, r_max),  d = clip((μ_B − μ)/σ, −d_max, d_max).
    """
    f64 = torch.float64
    sigma_b = torch.sqrt(var_b.to(f64) + eps)                        # σ_B  (C,)
    sigma = torch.sqrt(running_var.detach().to(f64) + eps)           # σ    (C,)
    r = torch.clamp(sigma_b / sigma, 1.0 / r_max, r_max)
    d = torch.clamp((mean_b.to(f64) - running_mean.detach().to(f64)) / sigma, -d_max, d_max)
    return r, d


def script_track(running_mean: Tensor, running_var: Tensor, num_batches_tracked: Tensor, mean: Tensor,
                  var: Tensor, m: int, momentum: Optional[float], eps: float, guard: bool) -> None:
    """``_BatchNorm._track`` + :func:`bnlab.functional.update_running_renorm_stats`, the guard as a mask.

    ok = all(isfinite(μ_B)) ∧ all(isfinite(σ²_B)) (or True without ``guard``, or for an
    empty batch); num_batches_tracked += ok; then, for m > 0, with α = momentum (or
    1/num_batches_tracked) in float64: μ ← μ + α(μ_B − μ), σ ← σ + α(σ_B − σ),
    running_var = σ² − ε; a batch with ok False leaves every buffer as it was.
    """
    if guard and m > 0:
        ok = torch.isfinite(mean).all() & torch.isfinite(var).all()
    else:
        ok = torch.ones((), dtype=torch.bool, device=mean.device)
    with torch.no_grad():
        num_batches_tracked.add_(ok.to(num_batches_tracked.dtype))
        if m == 0:
            return
        f64 = torch.float64
        if momentum is None:                                         # cumulative moving average
            alpha = 1.0 / num_batches_tracked.to(f64).clamp_min(1)
        else:                                                        # exponential moving average
            alpha = torch.full((), momentum, dtype=f64, device=mean.device)
        sigma = torch.sqrt(running_var.to(f64) + eps)                # σ    (C,)
        sigma_b = torch.sqrt(var.to(f64) + eps)                      # σ_B  (C,)
        sigma = sigma + alpha * (sigma_b - sigma)
        new_mean = running_mean + (mean.to(f64) - running_mean.to(f64)).mul(alpha).to(running_mean.dtype)
        new_var = (sigma * sigma - eps).clamp_min(0.0).to(running_var.dtype)
        running_mean.copy_(torch.where(ok, new_mean, running_mean))
        running_var.copy_(torch.where(ok, new_var, running_var))
