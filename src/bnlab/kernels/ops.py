"""The kernels as ``torch.library`` custom operators (namespace ``bnlab``).

Four operators wrap the backend contract of :mod:`bnlab.kernels`::

    bnlab::batch_norm_train(x, weight?, bias?, eps)            -> (y, mean, var)
    bnlab::batch_norm_eval(x, mean, var, weight?, bias?, eps)  -> y
    bnlab::batch_norm_backward(dy, x, weight?, mean, invstd, need_dx, need_dw, need_db)
    bnlab::batch_norm_backward_eval(dy, x, weight?, mean, invstd, need_dx, need_dw, need_db)
                                                               -> (dx, dweight, dbias)

Each has a fake (meta) implementation, so ``torch.compile`` and ``torch.export`` see
them as single opaque nodes with known output shapes — no graph break around BN —
while eager calls run whichever backend :func:`bnlab.kernels.select` picks at run
time. A gradient that was not asked for comes back as an empty ``(0,)`` tensor
(operators cannot return ``None``). The autograd formulas are registered in
:mod:`bnlab._autograd`.

The module-level names (``batch_norm_train`` …) are thin eager-first entry points:
on plain tensors outside any tracing (no ``torch.compile``/``torch.export``, no
dispatch or function mode, no functorch transform) they call the backend directly,
skipping the custom-operator dispatcher (~30–200 µs per call, measured); otherwise
they call the operator (``torch.ops.bnlab.<name>``, also exposed as ``<name>.op``).
Both paths run the same backend function and return the same results.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .. import kernels as _kernels
from .._stats import stats_dtype

__all__ = ["batch_norm_train", "batch_norm_eval", "batch_norm_backward", "batch_norm_backward_eval"]


def _param_dtype(x: Tensor, weight: Tensor | None) -> torch.dtype:
    return weight.dtype if weight is not None else stats_dtype(x.dtype)


def _grads_out(x, weight, dx, dw, db, need_dx, need_dw, need_db):
    """Replace gradients that were not computed by empty tensors (ops return tensors only)."""
    empty = x.new_empty((0,), dtype=_param_dtype(x, weight))
    dx = dx if need_dx and dx is not None else x.new_empty((0,))
    dw = dw if need_dw and dw is not None else empty
    db = db if need_db and db is not None else empty.clone()
    return dx, dw, db


_PLAIN = (Tensor, torch.nn.Parameter)                 # tensor types with no __torch_function__ override


def _plain_eager(*tensors) -> bool:
    """True when no tracer/mode/transform could need to see the operator itself."""
    return (
        not torch.compiler.is_compiling()
        and _get_current_dispatch_mode() is None
        and not torch._C._is_torch_function_mode_enabled()
        and not torch._C._are_functorch_transforms_active()
        and all(type(t) in _PLAIN for t in tensors if isinstance(t, Tensor))
    )


def _eager_first(op, impl):
    """Entry point running ``impl`` directly in plain eager mode and ``op`` otherwise."""

    def call(*args):
        if _plain_eager(*args[:5]):
            return impl(*args)
        return op(*args)

    call.op = op
    call.__name__ = impl.__name__
    call.__doc__ = impl.__doc__
    return call


# ----------------------------------------------------------------------------- training forward
def _batch_norm_train_impl(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Alg. 1: ``(y, μ_B, σ²_B)`` with the biased batch variance, statistics ``(C,)``."""
    y, mean, var = _kernels.select(x).forward_train(x, weight, bias, eps)
    return y, mean, var


_op_train = torch.library.custom_op("bnlab::batch_norm_train", mutates_args=())(_batch_norm_train_impl)
batch_norm_train = _eager_first(_op_train, _batch_norm_train_impl)


@_op_train.register_fake
def _(x, weight, bias, eps):
    c, sd = x.shape[1], stats_dtype(x.dtype)
    return torch.empty_like(x), x.new_empty((c,), dtype=sd), x.new_empty((c,), dtype=sd)


# ----------------------------------------------------------------------------- eval forward
def _batch_norm_eval_impl(x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """Alg. 2: ``y = γ·(x − mean)/sqrt(var + ε) + β`` with constant statistics."""
    return _kernels.select(x).forward_eval(x, mean, var, weight, bias, eps)


_op_eval = torch.library.custom_op("bnlab::batch_norm_eval", mutates_args=())(_batch_norm_eval_impl)
batch_norm_eval = _eager_first(_op_eval, _batch_norm_eval_impl)


@_op_eval.register_fake
def _(x, mean, var, weight, bias, eps):
    return torch.empty_like(x)


# ----------------------------------------------------------------------------- backwards
def _batch_norm_backward_impl(
    grad_out: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, invstd: Tensor,
    need_dx: bool, need_dw: bool, need_db: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Section 3's closed-form gradient of the training forward: ``(dx, dγ, dβ)``."""
    needs = (need_dx, need_dw, need_db)
    dx, dw, db = _kernels.select(x).backward(grad_out, x, weight, mean, invstd, needs)
    return _grads_out(x, weight, dx, dw, db, *needs)


def _batch_norm_backward_eval_impl(
    grad_out: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, invstd: Tensor,
    need_dx: bool, need_dw: bool, need_db: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradient of the eval forward (statistics constant): ``(dx, dγ, dβ)``."""
    needs = (need_dx, need_dw, need_db)
    dx, dw, db = _kernels.select(x).backward_eval(grad_out, x, weight, mean, invstd, needs)
    return _grads_out(x, weight, dx, dw, db, *needs)


def _fake_backward(grad_out, x, weight, mean, invstd, need_dx, need_dw, need_db):
    c, pd = x.shape[1], _param_dtype(x, weight)
    dx = torch.empty_like(x) if need_dx else x.new_empty((0,))
    dw = x.new_empty((c,) if need_dw and weight is not None else (0,), dtype=pd)
    db = x.new_empty((c,) if need_db else (0,), dtype=pd)
    return dx, dw, db


_op_backward = torch.library.custom_op("bnlab::batch_norm_backward", mutates_args=())(_batch_norm_backward_impl)
_op_backward_eval = torch.library.custom_op("bnlab::batch_norm_backward_eval", mutates_args=())(
    _batch_norm_backward_eval_impl
)
_op_backward.register_fake(_fake_backward)
_op_backward_eval.register_fake(_fake_backward)
batch_norm_backward = _eager_first(_op_backward, _batch_norm_backward_impl)
batch_norm_backward_eval = _eager_first(_op_backward_eval, _batch_norm_backward_eval_impl)
