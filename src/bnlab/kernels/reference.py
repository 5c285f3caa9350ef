"""Reference kernels: plain differentiable PyTorch ops, any device, any floating dtype.

One function per ``bnlab`` operator (same name, same arguments, see
:mod:`bnlab.kernels._schema`). They serve three roles:

* the operators' implementation on every device without a compiled kernel
  (``CompositeExplicitAutograd``), and on CPU when the C++ extension is unavailable
  or ``bnlab.set_backend("reference")`` is in force;
* the *composite* path: called directly (outside the dispatcher) under functorch
  transforms and forward-mode AD, autograd differentiates through their ops;
* the double-backward graphs (``bn_backward_graph``, ``bn_apply_backward_graph``).

Statistics: float64 sums, compensated two-pass variance (:mod:`bnlab._stats`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as TF

from .._stats import (FLOATING, broadcast_shape, channel_mean_var, compute_dtype, count_per_channel, reduce_dims,
                     stats_dtype)

F64 = torch.float64


# ----------------------------------------------------------------------------- activations
def act_forward(z, act: str, p: float):
    """g(z) for the fused activation."""
    if act == "identity":
        return z
    if act == "relu":
        return torch.relu(z)
    if act == "leaky_relu":
        return TF.leaky_relu(z, p)
    if act == "silu":
        return TF.silu(z)
    raise RuntimeError(f"bnlab: unknown activation {act!r}; choose identity, relu, leaky_relu or silu")


def act_backward(dy, z, act: str, p: float):
    """dz = dy·g'(z) (differentiable in dy and z)."""
    if act == "identity":
        return dy
    if act == "relu":
        return dy * (z > 0).to(dy.dtype)
    if act == "leaky_relu":
        return torch.where(z > 0, dy, dy * p)
    if act == "silu":
        s = torch.sigmoid(z)
        return dy * (s * (1 + z * (1 - s)))
    raise RuntimeError(f"bnlab: unknown activation {act!r}; choose identity, relu, leaky_relu or silu")


def act_inverse(y, act: str, p: float):
    """z = g⁻¹(y) for the invertible activations (In-Place ABN's backward)."""
    if act == "identity":
        return y
    if act == "leaky_relu":
        if not p > 0:
            raise ValueError(f"in-place backward needs an invertible activation: leaky_relu slope must be > 0, got {p}")
        return torch.where(y > 0, y, y / p)
    raise ValueError(f"in-place backward needs an invertible activation (identity, leaky_relu), got {act!r}")


# ----------------------------------------------------------------------------- helpers
def _like_input(y, x):
    """Cast ``y`` to ``x``'s dtype, keeping ``x``'s memory format."""
    return y.to(dtype=x.dtype, memory_format=torch.preserve_format)


def _vec(t, cd, shape):
    return t.to(cd).view(shape)


def _grad_dtype(param, fallback):
    return param.dtype if param is not None else fallback


def _check(x, **vectors):
    """The C++ kernels' argument checks: (N, C, *) input, (C,) per-channel vectors."""
    if x.dim() < 2:
        raise RuntimeError(f"bnlab: expected an input (N, C, *) with at least 2 dimensions, got {x.dim()}")
    c = x.shape[1]
    for name, t in vectors.items():
        if t is None:
            continue
        if t.numel() != c:
            raise RuntimeError(f"bnlab: {name} should contain {c} elements (one per channel), got {t.numel()}")
        if t.dim() > 1:
            raise RuntimeError(f"bnlab: {name} should be a 1-D tensor of {c} elements, got shape {list(t.shape)}")
        if t.dtype not in FLOATING:
            raise RuntimeError(f"bnlab: {name} should be a float64, float32, float16 or bfloat16 tensor, "
                               f"got {str(t.dtype).replace('torch.', '')}")



def _empty(x, dtype=None):
    return x.new_empty((0,), dtype=dtype)


# ----------------------------------------------------------------------------- forward ops
def bn_stats(input):
    """Alg. 1, lines 1-2: per-channel (μ_B, σ²_B), biased, in the statistics dtype."""
    mean, var = channel_mean_var(input)                              # (C,) float64
    sd = stats_dtype(input.dtype)
    return mean.to(sd), var.to(sd)


def bn_apply(input, mean, invstd, weight, bias, act, act_param):
    """y = g(γ·(x − mean)·invstd + β), the statistics given."""
    x = input
    _check(x, mean=mean, invstd=invstd, weight=weight, bias=bias)
    cd, shape = compute_dtype(x.dtype), broadcast_shape(x)           # (1, C, 1, ...)
    scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
    z = (x.to(cd) - _vec(mean, cd, shape)) * _vec(scale, cd, shape)  # γ·x̂
    if bias is not None:
        z = z + _vec(bias, cd, shape)
    return _like_input(act_forward(z, act, act_param), x)


def bn_eval(input, running_mean, running_var, weight, bias, eps, act, act_param):
    """Alg. 2: y = g(γ·(x − E[x])/sqrt(Var[x] + ε) + β)."""
    _check(input, running_mean=running_mean, running_var=running_var)
    sd = stats_dtype(input.dtype)
    invstd = torch.rsqrt(running_var.to(sd) + eps)
    return bn_apply(input, running_mean.to(sd), invstd, weight, bias, act, act_param)


@torch.no_grad()
def update_running_stats(running_mean, running_var, num_batches_tracked, mean, var, m, momentum, guard):
    """The running-statistics step of ``bn_train``, branch-free (no ``.item()``).

    ok = all(isfinite(μ_B)) ∧ all(isfinite(σ²_B)) (or True without ``guard``);
    num_batches_tracked += ok;  w = ok·momentum (or ok/num_batches_tracked when
    ``momentum`` is None);  running ← running + w·(statistic − running) with the
    unbiased m/(m−1)·σ²_B, computed in float64 and cast once to the buffer dtype.
    A batch with no values (m = 0) counts but changes no statistic (as PyTorch).
    """
    if guard and m > 0:
        ok = torch.isfinite(mean).all() & torch.isfinite(var).all()
    else:
        ok = torch.ones((), dtype=torch.bool, device=mean.device)
    if num_batches_tracked is not None:
        num_batches_tracked.add_(ok.to(num_batches_tracked.dtype))
    if running_mean is None or running_var is None or m == 0:
        return ok
    if momentum is None:
        if num_batches_tracked is None:
            raise RuntimeError("bn_train: momentum=None (cumulative average) needs num_batches_tracked")
        w = ok.to(F64) / num_batches_tracked.to(F64).clamp_min(1)
    else:
        w = ok.to(F64) * momentum
    unbiased = var.to(F64) * (m / (m - 1)) if m > 1 else var.to(F64)
    for buf, stat in ((running_mean, mean.to(F64)), (running_var, unbiased)):
        old = buf.to(F64)
        buf.copy_(old + w * (torch.where(ok, stat, old) - old))
    return ok


def bn_train(input, weight, bias, running_mean, running_var, num_batches_tracked,
             momentum, eps, guard, act, act_param):
    """Alg. 1 and the running-statistics update: ``(y, μ_B, σ²_B, ok)``."""
    x = input
    _check(x, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    mean64, var64 = channel_mean_var(x)                              # (C,) float64
    sd = stats_dtype(x.dtype)
    mean, var = mean64.to(sd), var64.to(sd)
    invstd = torch.rsqrt(var + eps)                                  # 1/sqrt(σ²_B + ε)
    y = bn_apply(x, mean, invstd, weight, bias, act, act_param)
    ok = update_running_stats(running_mean, running_var, num_batches_tracked,
                              mean64.detach(), var64.detach(), count_per_channel(x), momentum, guard)
    return y, mean.detach(), var.detach(), ok


def bn_train_(input, weight, bias, running_mean, running_var, num_batches_tracked,
              momentum, eps, guard, act, act_param):
    """``bn_train`` writing y over ``input`` (In-Place ABN); returns ``(μ_B, σ²_B, ok)``."""
    y, mean, var, ok = bn_train(input, weight, bias, running_mean, running_var, num_batches_tracked,
                                momentum, eps, guard, act, act_param)
    input.copy_(y)
    return mean, var, ok


# ----------------------------------------------------------------------------- backward ops
def _xhat_dz(grad_out, input, mean, invstd, weight, bias, act, act_param):
    """x̂ = (x − μ)·invstd and dz = dy·g'(γ·x̂ + β), in the compute dtype."""
    x = input
    cd, shape = compute_dtype(x.dtype), broadcast_shape(x)
    xhat = (x.to(cd) - _vec(mean, cd, shape)) * _vec(invstd, cd, shape)    # (N, C, *)
    dy = grad_out.to(cd)
    if act == "identity":
        return xhat, dy
    z = xhat if weight is None else xhat * _vec(weight, cd, shape)
    if bias is not None:
        z = z + _vec(bias, cd, shape)
    return xhat, act_backward(dy, z, act, act_param)


def bn_backward_reduce(grad_out, input, mean, invstd, weight, bias, act, act_param):
    """(Σ dz, Σ dz·x̂) per channel, float64, dz = dy·g'(z)."""
    xhat, dz = _xhat_dz(grad_out, input, mean, invstd, weight, bias, act, act_param)
    dims = reduce_dims(input)
    return dz.sum(dim=dims, dtype=F64), (dz * xhat).sum(dim=dims, dtype=F64)


def bn_backward_elemt(grad_out, input, mean, invstd, weight, bias, sum_dz, sum_dz_xhat, count, act, act_param):
    """Section 3: dx = γ·invstd·(dz − Σdz/m − x̂·Σdz·x̂/m), sums over m = ``count`` values."""
    x = input
    xhat, dz = _xhat_dz(grad_out, x, mean, invstd, weight, bias, act, act_param)
    cd, shape = compute_dtype(x.dtype), broadcast_shape(x)
    k = invstd.to(F64) if weight is None else invstd.to(F64) * weight.to(F64)
    m = max(int(count), 1)
    dx = _vec(k, cd, shape) * (dz - _vec(sum_dz.to(F64) / m, cd, shape)
                                - xhat * _vec(sum_dz_xhat.to(F64) / m, cd, shape))
    return _like_input(dx, x)


def _param_grads(weight, bias, sd, s_dz, s_dz_xhat, output_mask):
    dw = s_dz_xhat.to(weight.dtype) if output_mask[1] and weight is not None else None
    db = s_dz.to(_grad_dtype(bias, _grad_dtype(weight, sd))) if output_mask[2] else None
    return dw, db


def _pack(x, sd, dx, dw, db):
    """Gradients not computed become empty tensors (operators return tensors only)."""
    return (dx if dx is not None else _empty(x),
            dw if dw is not None else _empty(x, sd),
            db if db is not None else _empty(x, sd))


def bn_backward(grad_out, input, weight, bias, mean, var, eps, act, act_param, output_mask):
    """Section 3's closed form for ``bn_train``: ``(dx, dγ, dβ)``, σ⁻¹ = 1/sqrt(var + eps)."""
    invstd = torch.rsqrt(var + eps)
    s_dz, s_dz_xhat = bn_backward_reduce(grad_out, input, mean, invstd, weight, bias, act, act_param)
    dx = None
    if output_mask[0]:
        dx = bn_backward_elemt(grad_out, input, mean, invstd, weight, bias, s_dz, s_dz_xhat,
                               count_per_channel(input), act, act_param)
    sd = stats_dtype(input.dtype)
    return _pack(input, sd, dx, *_param_grads(weight, bias, sd, s_dz, s_dz_xhat, output_mask))


def bn_apply_backward(grad_out, input, mean, invstd, weight, bias, act, act_param, output_mask):
    """Gradient of ``bn_apply``/``bn_eval``, statistics constant: dx = γ·invstd·dz."""
    x = input
    cd, shape = compute_dtype(x.dtype), broadcast_shape(x)
    xhat, dz = _xhat_dz(grad_out, x, mean, invstd, weight, bias, act, act_param)
    dims = reduce_dims(x)
    dx = None
    if output_mask[0]:
        k = invstd if weight is None else invstd * weight.to(invstd.dtype)
        dx = _like_input(dz * _vec(k, cd, shape), x)
    s_dz = dz.sum(dim=dims, dtype=F64)
    s_dz_xhat = (dz * xhat).sum(dim=dims, dtype=F64) if output_mask[1] else s_dz
    sd = stats_dtype(x.dtype)
    return _pack(x, sd, dx, *_param_grads(weight, bias, sd, s_dz, s_dz_xhat, output_mask))


def bn_backward_from_output(grad_out, output, weight, bias, var, eps, act, act_param, output_mask):
    """In-Place ABN's gradient: x̂ = (g⁻¹(y) − β)/γ recovered from the output, then Section 3."""
    invstd = torch.rsqrt(var + eps)
    y = output
    cd, shape = compute_dtype(y.dtype), broadcast_shape(y)
    z = act_inverse(y.to(cd), act, act_param)
    if bias is not None:
        z = z - _vec(bias, cd, shape)
    xhat = z if weight is None else z / _vec(weight, cd, shape)
    dz = act_backward(grad_out.to(cd), act_inverse(y.to(cd), act, act_param), act, act_param)
    dims, m = reduce_dims(y), max(count_per_channel(y), 1)
    s_dz = dz.sum(dim=dims, dtype=F64)
    s_dz_xhat = (dz * xhat).sum(dim=dims, dtype=F64)
    dx = None
    if output_mask[0]:
        k = invstd.to(F64) if weight is None else invstd.to(F64) * weight.to(F64)
        dx = _vec(k, cd, shape) * (dz - _vec(s_dz / m, cd, shape) - xhat * _vec(s_dz_xhat / m, cd, shape))
        dx = _like_input(dx, y)
    sd = stats_dtype(y.dtype)
    return _pack(y, sd, dx, *_param_grads(weight, bias, sd, s_dz, s_dz_xhat, output_mask))


# ----------------------------------------------------------------------------- double backward
def bn_backward_graph(grad_out, input, weight, bias, eps, act, act_param, output_mask):
    """``bn_backward`` with differentiable ops, statistics recomputed from ``input``.

    Used when autograd records the backward (``create_graph=True``): the dependence
    of μ_B and σ²_B on x is part of the graph, so gradgradcheck holds.
    """
    x = input
    cd, shape, dims = compute_dtype(x.dtype), broadcast_shape(x), reduce_dims(x)
    m = count_per_channel(x)
    xc = x.to(cd)
    mu = xc.mean(dim=dims, keepdim=True)                             # μ_B  (1, C, 1...)
    var = (xc - mu).pow(2).mean(dim=dims, keepdim=True)              # σ²_B (1, C, 1...)
    inv = torch.rsqrt(var + eps)
    xhat = (xc - mu) * inv                                           # x̂    (N, C, *)
    dz = _dz_graph(grad_out.to(cd), xhat, weight, bias, act, act_param, cd, shape)
    sum_dz = dz.sum(dim=dims, keepdim=True)
    sum_dz_xhat = (dz * xhat).sum(dim=dims, keepdim=True)
    dx = dw = db = None
    if output_mask[0]:
        g = inv if weight is None else inv * _vec(weight, cd, shape)
        dx = (g / max(m, 1) * (m * dz - sum_dz - xhat * sum_dz_xhat)).to(x.dtype)
    sd = stats_dtype(x.dtype)
    if output_mask[1] and weight is not None:
        dw = sum_dz_xhat.view(-1).to(weight.dtype)
    if output_mask[2]:
        db = sum_dz.view(-1).to(_grad_dtype(bias, _grad_dtype(weight, sd)))
    return _pack(x, sd, dx, dw, db)


def bn_apply_backward_graph(grad_out, input, mean, invstd, weight, bias, act, act_param, output_mask):
    """``bn_apply_backward`` with differentiable ops (statistics constant)."""
    x = input
    cd, shape, dims = compute_dtype(x.dtype), broadcast_shape(x), reduce_dims(x)
    inv = _vec(invstd, cd, shape)
    xhat = (x.to(cd) - _vec(mean, cd, shape)) * inv
    dz = _dz_graph(grad_out.to(cd), xhat, weight, bias, act, act_param, cd, shape)
    dx = dw = db = None
    if output_mask[0]:
        g = inv if weight is None else inv * _vec(weight, cd, shape)
        dx = (dz * g).to(x.dtype)
    sd = stats_dtype(x.dtype)
    if output_mask[1] and weight is not None:
        dw = (dz * xhat).sum(dim=dims).to(weight.dtype)
    if output_mask[2]:
        db = dz.sum(dim=dims).to(_grad_dtype(bias, _grad_dtype(weight, sd)))
    return _pack(x, sd, dx, dw, db)


def _dz_graph(dy, xhat, weight, bias, act, act_param, cd, shape):
    if act == "identity":
        return dy
    z = xhat if weight is None else xhat * _vec(weight, cd, shape)
    if bias is not None:
        z = z + _vec(bias, cd, shape)
    return act_backward(dy, z, act, act_param)


OPS = (
    "bn_train", "bn_backward", "bn_eval", "bn_stats", "bn_apply", "bn_apply_backward",
    "bn_backward_reduce", "bn_backward_elemt", "bn_train_", "bn_backward_from_output",
)
GRAPH_OPS = ("bn_backward_graph", "bn_apply_backward_graph")
