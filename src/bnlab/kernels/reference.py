"""Reference kernels: plain PyTorch tensor ops, any device, any floating dtype.

This module defines the kernel contract that every backend implements (see
``bnlab.kernels``). All three functions are *non-differentiable* building blocks:
the autograd Functions in ``bnlab._autograd`` call them under ``no_grad`` and own
the gradient formulas. Inputs have shape ``(N, C, *)`` in any memory format;
outputs keep the input's memory format and dtype. Per-channel vectors are ``(C,)``.
"""
from __future__ import annotations

import torch

from .._stats import broadcast_shape, channel_mean_var, compute_dtype, reduce_dims, stats_dtype

NAME = "reference"


def _like_input(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Cast ``y`` to ``x``'s dtype, keeping ``x``'s memory format."""
    return y.to(dtype=x.dtype, memory_format=torch.preserve_format)


def forward_train(x, weight, bias, eps):
    """Alg. 1 with batch statistics.

    Returns ``(y, mean, var)``: the output, the per-channel batch mean μ_B and the
    *biased* batch variance σ²_B, both ``(C,)`` in :func:`stats_dtype`.
    """
    mean, var = channel_mean_var(x)                                  # (C,) float64
    sd = stats_dtype(x.dtype)
    mean, var = mean.to(sd), var.to(sd)
    invstd = torch.rsqrt(var + eps)                                  # 1/sqrt(σ²_B + ε)
    y = _affine_normalize(x, mean, invstd, weight, bias)
    return y, mean, var


def forward_eval(x, mean, var, weight, bias, eps):
    """Alg. 2: normalize with fixed (population) statistics ``mean``/``var``."""
    invstd = torch.rsqrt(var.to(stats_dtype(x.dtype)) + eps)
    return _affine_normalize(x, mean.to(stats_dtype(x.dtype)), invstd, weight, bias)


def _affine_normalize(x, mean, invstd, weight, bias):
    # Alg. 1: x̂ = (x − μ)/sqrt(σ² + ε);  y = γ·x̂ + β, folded into one scale per channel
    cd = compute_dtype(x.dtype)
    shape = broadcast_shape(x)                                       # (1, C, 1, ...)
    scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
    xc = x.to(cd)
    y = (xc - mean.to(cd).view(shape)) * scale.to(cd).view(shape)
    if bias is not None:
        y = y + bias.to(cd).view(shape)
    return _like_input(y, x)


def backward(grad_out, x, weight, mean, invstd, needs_input_grad=(True, True, True)):
    """Section 3, closed form, for the training-mode forward.

    With x̂ = (x − μ_B)·σ⁻¹ and m values per channel:
        dβ = Σ dy,   dγ = Σ dy·x̂,
        dx = γ·σ⁻¹/m · (m·dy − Σ dy − x̂·Σ dy·x̂).
    ``needs_input_grad`` is ``(dx, dγ, dβ)``; entries not needed come back ``None``.
    """
    need_dx, need_dw, need_db = needs_input_grad
    cd = compute_dtype(x.dtype)
    dims = reduce_dims(x)
    shape = broadcast_shape(x)
    m = x.numel() // x.shape[1] if x.shape[1] else 0
    dy = grad_out.to(cd)
    mu = mean.to(cd).view(shape)
    inv = invstd.to(cd).view(shape)
    xhat = (x.to(cd) - mu) * inv                                     # (N, C, *)
    sum_dy = dy.sum(dim=dims, dtype=torch.float64)                   # Σ dy          (C,)
    sum_dy_xhat = (dy * xhat).sum(dim=dims, dtype=torch.float64)     # Σ dy·x̂        (C,)
    dx = dw = db = None
    if need_dx:
        g = invstd.to(torch.float64) if weight is None else invstd.to(torch.float64) * weight.to(torch.float64)
        if m > 0:
            a = (g / m).to(cd).view(shape)
            dx = a * (m * dy - sum_dy.to(cd).view(shape) - xhat * sum_dy_xhat.to(cd).view(shape))
        else:
            dx = dy.clone()
        dx = _like_input(dx, x)
    if need_dw and weight is not None:
        dw = sum_dy_xhat.to(weight.dtype)
    if need_db:
        db = sum_dy.to(weight.dtype if weight is not None else stats_dtype(x.dtype))
    return dx, dw, db


def backward_eval(grad_out, x, weight, mean, invstd, needs_input_grad=(True, True, True)):
    """Gradient of the eval-mode forward, the statistics being constants.

    dx = γ·σ⁻¹·dy,  dγ = Σ dy·x̂,  dβ = Σ dy  with x̂ = (x − μ)·σ⁻¹.
    """
    need_dx, need_dw, need_db = needs_input_grad
    cd = compute_dtype(x.dtype)
    dims = reduce_dims(x)
    shape = broadcast_shape(x)
    dy = grad_out.to(cd)
    dx = dw = db = None
    if need_dx:
        g = invstd if weight is None else invstd * weight.to(invstd.dtype)
        dx = _like_input(dy * g.to(cd).view(shape), x)
    if need_dw and weight is not None:
        xhat = (x.to(cd) - mean.to(cd).view(shape)) * invstd.to(cd).view(shape)
        dw = (dy * xhat).sum(dim=dims, dtype=torch.float64).to(weight.dtype)
    if need_db:
        db = dy.sum(dim=dims, dtype=torch.float64).to(weight.dtype if weight is not None else stats_dtype(x.dtype))
    return dx, dw, db
