"""The autograd glue of the ``bnlab`` operators when they run without the C++ extension.

The C++ extension registers its own autograd kernels (``AutogradCPU``); this module
registers the same formulas at the ``Autograd`` key, for every other device and for
CPU when the extension is unavailable:

* ``bn_train``: Alg. 1, backward = Section 3's closed form (``bnlab::bn_backward``);
* ``bn_eval`` / ``bn_apply``: statistics constant, backward ``bnlab::bn_apply_backward``;
* ``bn_train_``: In-Place ABN, backward from the output (``bnlab::bn_backward_from_output``);
* ``bn_stats``: not differentiable.

Each saves only the input (or the output, in place) and ``(C,)`` vectors. When autograd
records the backward itself (``create_graph=True``), the gradient is computed by the
differentiable ``bn_backward_graph``/``bn_apply_backward_graph`` instead, so
gradgradcheck holds. Running statistics never enter the graph.
"""
from __future__ import annotations

import torch

from ._stats import stats_dtype
OPS = torch.ops.bnlab                                           # defined in bnlab.kernels._schema

__all__ = ["register"]

_AFTER = torch._C._after_autograd_keyset


def _none_unless(grads, mask):
    return tuple(g if need else None for g, need in zip(grads, mask))


def _redispatch(op, keyset, *args):
    with torch._C._AutoDispatchBelowAutograd():
        return op.redispatch(keyset & _AFTER, *args)


class _Train(torch.autograd.Function):
    @staticmethod
    def forward(ctx, keyset, x, weight, bias, rm, rv, nbt, momentum, eps, guard, act, act_param):
        y, mean, var, ok = _redispatch(OPS.bn_train.default, keyset, x, weight, bias, rm, rv, nbt,
                                       momentum, eps, guard, act, act_param)
        ctx.save_for_backward(x, weight, bias, mean, var)
        ctx.cfg = (eps, act, act_param)
        ctx.mark_non_differentiable(mean, var, ok)
        return y, mean, var, ok

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar, _dok):
        x, weight, bias, mean, var = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = [need[1], need[2] and weight is not None, need[3] and bias is not None]
        if not any(mask):
            return (None,) * 12
        eps, act, p = ctx.cfg
        if torch.is_grad_enabled():                                  # double backward
            grads = OPS.bn_backward_graph(dy, x, weight, bias, eps, act, p, mask)
        else:
            grads = OPS.bn_backward(dy, x, weight, bias, mean, var, eps, act, p, mask)
        return (None, *_none_unless(grads, mask)) + (None,) * 8


class _Apply(torch.autograd.Function):
    """bn_apply(x, mean, invstd, γ, β, act, p) and bn_eval(x, rm, rv, γ, β, ε, act, p)."""

    @staticmethod
    def forward(ctx, keyset, op, x, s1, s2, weight, bias, *rest):
        y = _redispatch(op, keyset, x, s1, s2, weight, bias, *rest)
        if op is OPS.bn_eval.default:
            sd = stats_dtype(x.dtype)
            mean, invstd = s1.to(sd), torch.rsqrt(s2.to(sd) + rest[0])
            act, p = rest[1:]
        else:
            mean, invstd = s1, s2
            act, p = rest
        ctx.save_for_backward(x, weight, bias, mean.detach(), invstd.detach())
        ctx.cfg = (act, p, len(rest))
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = [need[2], need[5] and weight is not None, need[6] and bias is not None]
        act, p, n_rest = ctx.cfg
        if not any(mask):
            return (None,) * (7 + n_rest)
        op = OPS.bn_apply_backward_graph if torch.is_grad_enabled() else OPS.bn_apply_backward
        dx, dw, db = _none_unless(op(dy, x, mean, invstd, weight, bias, act, p, mask), mask)
        return (None, None, dx, None, None, dw, db) + (None,) * n_rest


class _TrainInplace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, keyset, x, weight, bias, rm, rv, nbt, momentum, eps, guard, act, act_param):
        mean, var, ok = _redispatch(OPS.bn_train_.default, keyset, x, weight, bias, rm, rv, nbt,
                                    momentum, eps, guard, act, act_param)
        ctx.mark_dirty(x)
        ctx.mark_non_differentiable(mean, var, ok)
        ctx.save_for_backward(x, weight, bias, var)                  # x now holds y
        ctx.cfg = (eps, act, act_param)
        return x, mean, var, ok

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar, _dok):
        y, weight, bias, var = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = [need[1], need[2] and weight is not None, need[3] and bias is not None]
        if not any(mask):
            return (None,) * 12
        eps, act, p = ctx.cfg
        grads = OPS.bn_backward_from_output(dy, y, weight, bias, var, eps, act, p, mask)
        return (None, *_none_unless(grads, mask)) + (None,) * 8


def _train_kernel(keyset, *args):
    return _Train.apply(keyset, *args)


def _train_inplace_kernel(keyset, *args):
    x, mean, var, ok = _TrainInplace.apply(keyset, *args)
    return mean, var, ok


def _eval_kernel(keyset, *args):
    return _Apply.apply(keyset, OPS.bn_eval.default, *args)


def _apply_kernel(keyset, *args):
    return _Apply.apply(keyset, OPS.bn_apply.default, *args)


def _stats_kernel(keyset, x):
    return _redispatch(OPS.bn_stats.default, keyset, x)


KERNELS = {
    "bn_train": _train_kernel,
    "bn_train_": _train_inplace_kernel,
    "bn_eval": _eval_kernel,
    "bn_apply": _apply_kernel,
    "bn_stats": _stats_kernel,
}


def register(lib) -> None:
    """Register the autograd kernels above at the ``Autograd`` key of ``lib``'s ops."""
    for name, fn in KERNELS.items():
        lib.impl(name, fn, "Autograd", with_keyset=True)
