"""Fake (meta) implementations of the ``bnlab`` operators: output shapes and dtypes only.

They serve ``device="meta"``, ``FakeTensorMode``, ``make_fx``, ``torch.compile``
and ``torch.export``; nothing here reads tensor data (no ``.item()``).
"""
from __future__ import annotations

import torch

from .._stats import stats_dtype
from ._schema import NAMESPACE


def _vec(x, dtype):
    return x.new_empty((x.shape[1],), dtype=dtype)


def _grads(x, weight, bias, output_mask):
    """(dx, dγ, dβ) as the kernels return them: empty ``(0,)`` where not asked for."""
    sd = stats_dtype(x.dtype)
    dx = torch.empty_like(x) if output_mask[0] else x.new_empty((0,))
    dw = _vec(x, weight.dtype) if output_mask[1] and weight is not None else x.new_empty((0,), dtype=sd)
    if output_mask[2]:
        db = _vec(x, bias.dtype if bias is not None else (weight.dtype if weight is not None else sd))
    else:
        db = x.new_empty((0,), dtype=sd)
    return dx, dw, db


def _same_device(op: str, input, *tensors) -> None:
    """Refuse a tensor on another device than the input: a CPU input beside a meta tensor
    dispatches here, and an uninitialised output must not pass for a result."""
    for t in tensors:
        if t is not None and t.device != input.device:
            raise RuntimeError(f"bnlab: {op} got a tensor on {t.device} beside an input on {input.device}")


def _train(input, weight, bias, running_mean, running_var, num_batches_tracked, momentum, eps, guard, act, act_param):
    _same_device("bn_train", input, weight, bias, running_mean, running_var, num_batches_tracked)
    sd = stats_dtype(input.dtype)
    return torch.empty_like(input), _vec(input, sd), _vec(input, sd), input.new_empty((), dtype=torch.bool)


def _train_(input, weight, bias, running_mean, running_var, num_batches_tracked, momentum, eps, guard, act, act_param):
    _same_device("bn_train_", input, weight, bias, running_mean, running_var, num_batches_tracked)
    sd = stats_dtype(input.dtype)
    return _vec(input, sd), _vec(input, sd), input.new_empty((), dtype=torch.bool)


def _backward(grad_out, input, weight, bias, mean, var, eps, act, act_param, output_mask):
    return _grads(input, weight, bias, output_mask)


def _eval(input, running_mean, running_var, weight, bias, eps, act, act_param):
    # the CPU kernel refuses what check_input refuses, and a layer's eager eval forward relies on
    # it (_BatchNorm.forward): the device is refused here
    _same_device("bn_eval", input, running_mean, running_var, weight, bias)
    return torch.empty_like(input)


def _stats(input):
    sd = stats_dtype(input.dtype)
    return _vec(input, sd), _vec(input, sd)


def _apply(input, mean, invstd, weight, bias, act, act_param):
    return torch.empty_like(input)


def _apply_backward(grad_out, input, mean, invstd, weight, bias, act, act_param, output_mask):
    return _grads(input, weight, bias, output_mask)


def _backward_reduce(grad_out, input, mean, invstd, weight, bias, act, act_param):
    return _vec(input, torch.float64), _vec(input, torch.float64)


def _backward_elemt(grad_out, input, mean, invstd, weight, bias, sum_dz, sum_dz_xhat, count, act, act_param):
    return torch.empty_like(input)


def _backward_from_output(grad_out, output, weight, bias, var, eps, act, act_param, output_mask):
    return _grads(output, weight, bias, output_mask)


FAKES = {
    "bn_train": _train,
    "bn_train_": _train_,
    "bn_backward": _backward,
    "bn_eval": _eval,
    "bn_stats": _stats,
    "bn_apply": _apply,
    "bn_apply_backward": _apply_backward,
    "bn_backward_reduce": _backward_reduce,
    "bn_backward_elemt": _backward_elemt,
    "bn_backward_from_output": _backward_from_output,
}


def register(lib) -> None:
    for name, fn in FAKES.items():
        torch.library.register_fake(f"{NAMESPACE}::{name}", fn, lib=lib)
