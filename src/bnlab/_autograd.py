"""The differentiable Batch Normalization primitives.

``BatchNormTrain`` is the paper's Algorithm 1 (normalize with the mini-batch
statistics) with the closed-form backward of Section 3; ``BatchNormEval`` is the
inference transform of Algorithm 2, where the population statistics are constants.

Both save only what their backward needs: the input and two ``(C,)`` vectors
(plus the weight). Both backwards are themselves differentiable: when autograd
asks for a graph of the backward (``create_graph=True``, double backward), the
gradient is recomputed from the saved input with differentiable tensor ops that
implement the same closed form, so gradgradcheck holds.

Forwards and first-order backwards call the ``torch.library`` custom operators of
:mod:`bnlab.kernels.ops`, so ``torch.compile`` sees one opaque node per BN kernel
(no graph break) and ``torch.export`` traces a bnlab model; at run time each
operator runs the backend that :func:`bnlab.kernels.select` picks.
"""
from __future__ import annotations

import torch

from ._stats import broadcast_shape, compute_dtype, count_per_channel, reduce_dims, stats_dtype
from .kernels import ops

__all__ = ["BatchNormTrain", "BatchNormEval"]


def _cast_grad(g, dtype):
    return None if g is None or dtype is None else g.to(dtype)


def _dtype(t):
    return None if t is None else t.dtype


class BatchNormTrain(torch.autograd.Function):
    """y = γ·(x − μ_B)/sqrt(σ²_B + ε) + β with batch statistics (Alg. 1).

    ``BatchNormTrain.apply(x, weight, bias, eps) -> (y, mean, var)``; ``mean`` and the
    biased ``var`` are returned (non-differentiable) for the running-statistics
    update. The forward runs the custom operator ``bnlab::batch_norm_train`` (one
    opaque node for ``torch.compile``/``torch.export``); the backward is Section 3's
    closed form through ``bnlab::batch_norm_backward``. Saved for backward: x, γ
    and the two ``(C,)`` vectors μ_B and σ²_B.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, var = ops.batch_norm_train(x, weight, bias, float(eps))
        ctx.save_for_backward(x, weight, mean, var)
        ctx.eps = float(eps)
        ctx.param_dtypes = (_dtype(weight), _dtype(bias))
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        x, weight, mean, var = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1] and weight is not None, ctx.needs_input_grad[2])
        if not any(needs):
            return None, None, None, None
        if torch.is_grad_enabled():
            # double backward requested: a differentiable rendering of the same formulas
            dx, dw, db = _train_backward_composite(grad_out, x, weight, ctx.eps, needs)
        else:
            invstd = torch.rsqrt(var + ctx.eps)                      # σ⁻¹ = 1/sqrt(σ²_B + ε)  (C,)
            dx, dw, db = ops.batch_norm_backward(grad_out, x, weight, mean, invstd, *needs)
            dx, dw, db = (_none_if_unneeded(g, n) for g, n in zip((dx, dw, db), needs))
        wd, bd = ctx.param_dtypes
        return dx, _cast_grad(dw, wd), _cast_grad(db, bd), None


class BatchNormEval(torch.autograd.Function):
    """y = γ·(x − E[x])/sqrt(Var[x] + ε) + β with fixed statistics (Alg. 2, step 11).

    ``BatchNormEval.apply(x, mean, var, weight, bias, eps) -> y`` through the custom
    operator ``bnlab::batch_norm_eval``. ``mean``/``var`` are constants: no gradient
    flows to them. Saved for backward: x, γ, mean and σ⁻¹.
    """

    @staticmethod
    def forward(ctx, x, mean, var, weight, bias, eps):
        y = ops.batch_norm_eval(x, mean, var, weight, bias, float(eps))
        invstd = torch.rsqrt(var.to(stats_dtype(x.dtype)) + eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.param_dtypes = (_dtype(weight), _dtype(bias))
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, invstd = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[3] and weight is not None, ctx.needs_input_grad[4])
        if not any(needs):
            return (None,) * 6
        if torch.is_grad_enabled():
            dx, dw, db = _eval_backward_composite(grad_out, x, weight, mean, invstd, needs)
        else:
            dx, dw, db = ops.batch_norm_backward_eval(grad_out, x, weight, mean, invstd, *needs)
            dx, dw, db = (_none_if_unneeded(g, n) for g, n in zip((dx, dw, db), needs))
        wd, bd = ctx.param_dtypes
        return dx, None, None, _cast_grad(dw, wd), _cast_grad(db, bd), None


def _none_if_unneeded(g, need):
    return g if need else None


def _train_backward_composite(dy, x, weight, eps, needs):
    """Section 3's gradients written with differentiable ops (for double backward).

    The statistics are recomputed from ``x`` so that their dependence on ``x`` is
    part of the graph: dx = γ·σ⁻¹/m·(m·dy − Σdy − x̂·Σdy·x̂), dγ = Σdy·x̂, dβ = Σdy.
    """
    cd = compute_dtype(x.dtype)
    dims = reduce_dims(x)
    shape = broadcast_shape(x)
    m = count_per_channel(x)
    xc, dyc = x.to(cd), dy.to(cd)
    mu = xc.mean(dim=dims, keepdim=True)                             # μ_B      (1, C, 1...)
    var = (xc - mu).pow(2).mean(dim=dims, keepdim=True)              # σ²_B     (1, C, 1...)
    inv = torch.rsqrt(var + eps)
    xhat = (xc - mu) * inv                                           # x̂        (N, C, *)
    sum_dy = dyc.sum(dim=dims, keepdim=True)
    sum_dy_xhat = (dyc * xhat).sum(dim=dims, keepdim=True)
    dx = dw = db = None
    if needs[0]:
        g = inv if weight is None else inv * weight.to(cd).view(shape)
        dx = (g / max(m, 1) * (m * dyc - sum_dy - xhat * sum_dy_xhat)).to(x.dtype)
    if needs[1] and weight is not None:
        dw = sum_dy_xhat.view(-1)
    if needs[2]:
        db = sum_dy.view(-1)
    return dx, dw, db


def _eval_backward_composite(dy, x, weight, mean, invstd, needs):
    """Eval-mode gradients with differentiable ops: dx = γ·σ⁻¹·dy, dγ = Σdy·x̂, dβ = Σdy."""
    cd = compute_dtype(x.dtype)
    dims = reduce_dims(x)
    shape = broadcast_shape(x)
    dyc = dy.to(cd)
    inv = invstd.to(cd).view(shape)
    dx = dw = db = None
    if needs[0]:
        g = inv if weight is None else inv * weight.to(cd).view(shape)
        dx = (dyc * g).to(x.dtype)
    if needs[1] and weight is not None:
        dw = (dyc * (x.to(cd) - mean.to(cd).view(shape)) * inv).sum(dim=dims)
    if needs[2]:
        db = dyc.sum(dim=dims)
    return dx, dw, db
