"""Functional Batch Normalization (Ioffe & Szegedy, 2015), written from scratch.

``batch_norm`` has the signature and semantics of ``torch.nn.functional.batch_norm``
but none of its code: the math is Algorithm 1 (training: batch statistics) and
Algorithm 2 (inference: population statistics), the gradient the closed form of
Section 3, both in :mod:`bnlab._autograd`; the kernels are chosen by
:func:`bnlab.set_backend`.
"""
from __future__ import annotations

import sys

import torch

from torch.autograd import forward_ad as _fwAD
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import kernels as K
from .errors import (BatchNormDTypeError, BatchNormInputTypeError, BatchNormRankError, BatchNormShapeError,
                     BatchNormStateError, BatchNormUnsupportedDTypeError)
from ._stats import FLOATING as _FLOATING, channel_mean_var, count_per_channel, stats_dtype, unbiased_from_biased

__all__ = [
    "batch_norm", "check_input", "update_running_stats", "batch_norm_train", "batch_norm_eval",
    "batch_renorm", "renorm_correction", "batch_renorm_train", "update_running_renorm_stats",
    "ghost_batch_norm", "ghost_sizes", "ghost_batch_norm_train", "check_virtual_batch_size",
]

_HALF = (torch.float16, torch.bfloat16)
_F32 = torch.float32
_PLAIN = (torch.Tensor, torch.nn.Parameter)                # tensor types without a __torch_function__ override


def is_concrete(*tensors) -> bool:
    """True in plain eager mode on real tensors: Python may read their values.

    False while tracing or compiling (``torch.jit.trace``, ``torch.compile``, ``torch.export``,
    ``make_fx``), under a dispatch mode (``FakeTensorMode``), inside a functorch transform
    (``vmap``, ``grad``, ``jvp``) and for tensor subclasses or ``meta`` tensors. Code that
    would branch on a tensor's value (the non-finite guard, Batch Renorm's schedule) takes
    a branch-free path then.
    """
    # torch.jit.is_tracing() and _get_current_dispatch_mode() is not None, as their C calls (per call cost)
    if (torch.compiler.is_compiling() or torch._C._is_tracing() or torch._C._len_torch_dispatch_stack() > 0
            or torch._C._are_functorch_transforms_active()):
        return False
    for t in tensors:
        if t is not None and (type(t) not in _PLAIN or t.is_meta):
            return False
    return True


def _has_tangent(t) -> bool:
    return t is not None and _fwAD.unpack_dual(t).tangent is not None


def _all_match(input, c, tensors) -> bool:
    """True when every non-None tensor of ``tensors`` is 1-D of ``c`` elements, of ``input``'s dtype and device."""
    dt, dev = input.dtype, input.device
    for t in tensors:
        if t is not None and (type(t) not in _PLAIN or t.numel() != c or t.dim() != 1 or t.dtype is not dt
                              or t.device != dev):
            return False
    return True


# C calls bound once (torch.compiler.is_compiling is two Python frames; dynamo recognises it by identity)
_is_compiling = torch.compiler.is_compiling
_is_tracing, _dispatch_depth = torch._C._is_tracing, torch._C._len_torch_dispatch_stack
_functorch_active = torch._C._are_functorch_transforms_active


def plain_call(input, running_mean, running_var, weight, bias, training, eps) -> bool:
    """True for a plain eager call with arguments :func:`check_input` accepts at once.

    Plain eager: no tracing, compiling, exporting, dispatch mode, functorch transform or
    forward AD. The arguments: a plain floating input (N, C, *) with enough values per
    channel in training, every tensor given a plain (C,) tensor on the input's device of its
    dtype (or float32 beside float16/bfloat16), the running statistics both given (or, in
    training, both None), ``eps`` valid.
    A layer that gets True may call the operators directly (``_BatchNorm.forward``); one
    that gets False takes the general path, which checks (and raises) in full.
    """
    if (type(input) is not torch.Tensor or eps is None or _fwAD._current_level >= 0 or _is_compiling()
            or _is_tracing() or _dispatch_depth() or _functorch_active()
            or (running_mean is None) != (running_var is None) or (running_mean is None and not training)):
        return False
    shape = input.shape
    if len(shape) < 2 or input.dtype not in _FLOATING:
        return False
    c, dt, cpu = shape[1], input.dtype, input.is_cpu
    for t in (running_mean, running_var, weight, bias):
        if t is not None and (type(t) not in _PLAIN or (t.dtype is not dt and not (t.dtype is _F32 and dt in _HALF))
                              or t.numel() != c or t.dim() != 1 or t.is_cpu is not cpu
                              or (not cpu and t.device != input.device)):
            return False
    if not ((eps > 0.0 and input.numel() >= 2 * c) if training else eps >= 0.0):
        return False
    return not (_ONNX_FLAGS[0] or _onnx_flag())()


def check_input(input, running_mean=None, running_var=None, weight=None, bias=None, training=False, eps=None):
    """Raise the error ``torch.nn.functional.batch_norm`` raises for an argument it cannot use.

    Called before anything is computed or updated, so that a call that raises
    leaves running statistics untouched. The exception classes of :mod:`bnlab.errors`
    are PyTorch's types and the Python ones at once (a size mismatch is both
    ``RuntimeError`` and ``ValueError``). ``eps`` is checked as PyTorch checks it, at
    the call: positive in training, non-negative in evaluation.
    """
    if plain_call(input, running_mean, running_var, weight, bias, training, eps):
        return
    if not isinstance(input, torch.Tensor):
        raise BatchNormInputTypeError(f"batch_norm: input must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise BatchNormUnsupportedDTypeError(
            f"batch_norm: expected a floating-point input, got dtype {input.dtype}"
            " (integer, bool and complex tensors cannot be normalized)"
        )
    if input.dim() < 2:
        raise BatchNormRankError(f"batch_norm: expected at least 2D input (N, C, *), got {input.dim()}D input")
    c = input.shape[1]
    if (_all_match(input, c, (running_mean, running_var, weight, bias)) and eps is not None
            and _fwAD._current_level < 0 and (running_mean is not None or training)
            and (running_mean is None) == (running_var is None)):
        # the common case in one pass: every tensor given has C elements, the input's dtype and device
        if (eps > 0.0 if training else eps >= 0.0) and not (training and count_per_channel(input) == 1):
            return
    # PyTorch's order: the batch size, then eps, then the tensors' sizes, devices and dtypes
    if training and count_per_channel(input) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
    if eps is not None:
        if training and not eps > 0.0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
        if not eps >= 0.0:
            raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: running_mean and running_var must either both be None or neither be None")
    if not training and running_mean is None:
        raise BatchNormStateError("batch_norm: running_mean and running_var must be defined in evaluation mode")
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"batch_norm: {name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.numel() != c:
            raise BatchNormShapeError(
                f"batch_norm: {name} should contain {c} elements not {t.numel()}: the input has "
                f"{c} channels (dim 1) but {name} has {t.numel()} (check num_features)"
            )
        if t.dim() != 1:
            raise BatchNormShapeError(
                f"batch_norm: {name} should be a 1-D tensor of {c} elements, got shape {tuple(t.shape)}"
            )
        if t.device != input.device:
            raise RuntimeError(
                f"batch_norm: {name} is on {t.device} but the input is on {input.device}; "
                "move the module and the input to the same device"
            )
        # an empty batch is returned empty whatever the dtypes (as in PyTorch)
        if t.dtype != input.dtype and not (input.dtype in _HALF and t.dtype == torch.float32) and input.numel():
            raise BatchNormDTypeError(
                f"batch_norm: mixed dtype: {name} has dtype {t.dtype} but the input has dtype {input.dtype}; "
                "parameters and statistics must share the input's dtype (or be float32 for "
                "float16/bfloat16 input)"
            )
    if _fwAD._current_level >= 0 and _has_tangent(input) and (_has_tangent(running_mean) or _has_tangent(running_var)):
        raise RuntimeError("batch_norm is not differentiable wrt running_mean and running_var, they cannot have "
                           "forward grad defined")


@torch.no_grad()
def update_running_stats(running_mean, running_var, mean, var, m, momentum):
    """Exponential moving average of the batch statistics (Alg. 2's population estimate).

    running_mean ← (1 − momentum)·running_mean + momentum·μ_B
    running_var  ← (1 − momentum)·running_var  + momentum·m/(m−1)·σ²_B

    In place and outside autograd: the buffers never carry graph history. The
    arithmetic is float64 and only the result is rounded to the buffers' dtype, so
    float16/bfloat16 buffers do not overflow on a batch whose variance does not fit
    them (PyTorch's rounding). ``momentum`` is a float or a 0-d tensor (traced code).
    A batch with ``m == 0`` values per channel changes nothing (as in PyTorch).
    """
    if running_mean is None or m == 0:
        return
    f64 = torch.float64
    w = momentum.to(f64) if isinstance(momentum, torch.Tensor) else momentum
    unbiased = unbiased_from_biased(var.to(f64), m)
    # running ← running + w·(statistic − running): the operator ``bnlab::bn_train``'s own step
    for buf, stat in ((running_mean, mean.to(f64)), (running_var, unbiased)):
        old = buf.to(f64)
        buf.copy_(old + w * (stat - old))


def _empty_output(input, weight, bias):
    """The output for an input with no elements: empty, in the input's dtype, on the graph."""
    y = input.clone()
    for p in (weight, bias):
        if p is not None and p.requires_grad:
            y = y + p.sum().to(input.dtype) * 0                      # keeps γ, β on the graph (zero gradient)
    return y


def _mixed(input, *tensors) -> bool:
    return any(t is not None and t.dtype != input.dtype for t in tensors)


def batch_norm_train(input, weight, bias, eps):
    """Alg. 1 on a checked input: returns ``(y, μ_B, σ²_B)``, the statistics detached."""
    if input.numel() == 0 and _mixed(input, weight, bias):
        # nothing to normalize, and PyTorch accepts any dtypes then: an empty output
        c, sd = input.shape[1], stats_dtype(input.dtype)
        return _empty_output(input, weight, bias), input.new_zeros(c, dtype=sd), input.new_zeros(c, dtype=sd)
    y, mean, var, _ok = K.bn_train(input, weight, bias, None, None, None, 0.0, float(eps), False)
    return y, mean, var


def batch_norm_train_tracked(input, weight, bias, running_mean, running_var, num_batches_tracked,
                             momentum, eps, guard=True):
    """Alg. 1 and the running-statistics update in one operator call: returns ``(y, ok)``.

    ``running_mean``/``running_var`` (and ``num_batches_tracked``, which may be None
    unless ``momentum`` is None) are updated in place, in float64 and rounded once to
    their dtype, unless ``guard`` is set and the batch statistics are not finite; then
    ``ok`` (a 0-d bool tensor) is False and nothing changed.
    """
    if input.numel() == 0 and _mixed(input, weight, bias, running_mean, running_var):
        y, _mean, _var = batch_norm_train(input, weight, bias, eps)
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)                              # an empty batch counts (as in PyTorch)
        return y, torch.ones((), dtype=torch.bool, device=input.device)
    y, _mean, _var, ok = K.bn_train(input, weight, bias, running_mean, running_var, num_batches_tracked,
                                    momentum, float(eps), bool(guard))
    return y, ok


def batch_norm_eval(input, mean, var, weight, bias, eps):
    """Alg. 2's inference transform with the given constant statistics.

    While ``torch.onnx.export(..., dynamo=True)`` captures the model, the transform is
    recorded as ATen's inference batch norm, which the exporter writes as ONNX's
    standard ``BatchNormalization`` node (only the graph is built; nothing is computed
    by it). The TorchScript-based exporter (``dynamo=False``) records bnlab's own
    operator, which :mod:`bnlab._onnx` translates to the same node.
    """
    if input.numel() == 0 and _mixed(input, mean, var, weight, bias):
        return _empty_output(input, weight, bias)
    if _onnx_capture():
        return torch.ops.aten._native_batch_norm_legit_no_training.default(
            input, weight, bias, mean.detach(), var.detach(), 0.0, float(eps))[0]
    if mean.requires_grad or var.requires_grad:                      # constants for autograd (Alg. 2)
        mean, var = mean.detach(), var.detach()
    return K.bn_eval(input, mean, var, weight, bias, float(eps))


def _onnx_capture() -> bool:
    """True while the ONNX exporter (``dynamo=True``) captures a graph with ``torch.export``."""
    return _onnx_flag()() and not _is_tracing()


def _onnx_flag():
    """The exporter's "is it running" test (a callable); a constant False until torch.onnx is imported."""
    flag = _ONNX_FLAGS[0]
    if flag is None:
        onnx = sys.modules.get("torch.onnx")
        if onnx is None:                                             # torch.onnx not imported (yet)
            return _false
        flag = _ONNX_FLAGS[0] = _onnx_flags(onnx)
    return flag


def _false() -> bool:
    return False


def _onnx_flags(onnx):
    """The cheapest reliable "is the dynamo ONNX exporter running" test this torch offers."""
    try:
        from torch.onnx._internal.exporter import _flags

        return lambda: _flags._is_onnx_exporting
    except ImportError:                                              # another torch layout: the public test
        return onnx.is_in_onnx_export


_ONNX_FLAGS = [None]


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    r"""Batch Normalization over the channel dimension (dim 1) of ``input``.

    Training (Alg. 1): with the mini-batch mean μ_B and *biased* variance σ²_B of
    each channel over the ``m = N·∏spatial`` values that share it,

    .. math:: y = \gamma \frac{x - \mu_B}{\sqrt{\sigma_B^2 + \epsilon}} + \beta

    and, when running statistics are given, they are updated in place:
    ``running = (1 − momentum)·running + momentum·statistic`` with the *unbiased*
    ``m/(m−1)·σ²_B`` for the variance (Alg. 2). Evaluation: the same transform with
    ``running_mean``/``running_var`` in place of the batch statistics.

    Args:
        input: tensor ``(N, C, *)``, floating point.
        running_mean, running_var: ``(C,)`` buffers or ``None`` (required when
            ``training=False``).
        weight, bias: γ and β, ``(C,)`` or ``None`` (γ = 1, β = 0).
        training: use batch statistics (and update the running ones).
        momentum: weight of the new batch in the running average. PyTorch's
            convention: 0.1 here is Keras' / TensorFlow's ``momentum=0.9``.
        eps: ε added to the variance.

    Returns:
        Tensor of ``input``'s shape, dtype and memory format.

    Example:
        >>> x = torch.randn(8, 3, 4, 4)
        >>> rm, rv = torch.zeros(3), torch.ones(3)
        >>> y = batch_norm(x, rm, rv, training=True)
        >>> y.mean(dim=(0, 2, 3)).abs().max() < 1e-5
        tensor(True)

    Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by
    Reducing Internal Covariate Shift", ICML 2015.
    """
    check_input(input, running_mean, running_var, weight, bias, training, eps)
    if training:
        # momentum is a float here (functional form): no count needed
        return batch_norm_train_tracked(input, weight, bias, running_mean, running_var, None,
                                        momentum, eps, guard=False)[0]
    return batch_norm_eval(input, running_mean, running_var, weight, bias, eps)



# ---------------------------------------------------------------------------------------
# Batch Renormalization (Ioffe, 2017)
# ---------------------------------------------------------------------------------------

@torch.no_grad()
def renorm_correction(mean_b, var_b, running_mean, running_var, eps, r_max, d_max):
    """Batch Renorm's per-channel corrections ``(r, d)``, constants for autograd.

    With σ_B = sqrt(σ²_B + ε) and the running σ = sqrt(running_var + ε) (Ioffe 2017, Alg. 1):

        r = clip(σ_B / σ, 1/r_max, r_max),   d = clip((μ_B − μ) / σ, −d_max, d_max).

    Computed in float64 under ``no_grad`` (the paper's stop_gradient). Returns two
    float64 ``(C,)`` tensors.
    """
    f64 = torch.float64
    sigma_b = torch.sqrt(var_b.to(f64) + eps)                        # σ_B  (C,)
    sigma = torch.sqrt(running_var.detach().to(f64) + eps)           # σ    (C,)
    r = (sigma_b / sigma).clamp(1.0 / r_max, r_max)
    d = ((mean_b.to(f64) - running_mean.detach().to(f64)) / sigma).clamp(-d_max, d_max)
    return r, d


def batch_renorm_train(input, weight, bias, eps, running_mean, running_var, r_max, d_max):
    """Batch Renorm's training transform on a checked input: returns ``(y, μ_B, σ²_B)``.

    y = γ·(r·(x − μ_B)/σ_B + d) + β, which is Batch Normalization with the effective
    affine parameters γ' = γ·r and β' = γ·d + β. Since r and d are constants, the
    gradient is exactly Alg. 1's closed form with γ' (and, through autograd,
    dγ = Σ dy·(r·x̂ + d), dβ = Σ dy). Without running statistics, or with
    ``r_max == 1`` and ``d_max == 0``, this *is* Batch Normalization (r = 1, d = 0).
    """
    plain = not isinstance(r_max, torch.Tensor) and r_max == 1.0 and d_max == 0.0
    if running_mean is None or plain:
        return batch_norm_train(input, weight, bias, eps)
    # μ_B, σ²_B (float64, biased) to form the corrections before normalizing
    mean_b, var_b = channel_mean_var(input.detach())                 # (C,), (C,)
    r, d = renorm_correction(mean_b, var_b, running_mean, running_var, eps, r_max, d_max)
    # the dtype γ has (float32 for half input without γ): what check_input accepts for parameters
    pdt = weight.dtype if weight is not None else stats_dtype(input.dtype)
    r, d = r.to(pdt), d.to(pdt)
    # γ' = γ·r,  β' = γ·d + β    (C,)
    w_eff = r if weight is None else weight * r
    b_eff = d if weight is None else weight * d
    if bias is not None:
        b_eff = b_eff + bias
    return batch_norm_train(input, w_eff, b_eff, eps)


@torch.no_grad()
def update_running_renorm_stats(running_mean, running_var, mean, var, eps, momentum):
    """Batch Renorm's moving averages of μ and σ (Ioffe 2017, Alg. 1):

        μ ← μ + α·(μ_B − μ),   σ ← σ + α·(σ_B − σ),   σ_B = sqrt(σ²_B + ε)

    with α = ``momentum``. σ is stored in Batch Normalization's parametrization,
    ``running_var = σ² − ε`` (so that sqrt(running_var + ε) = σ): buffers, state_dict
    and the inference transform stay those of ``BatchNorm``. In place, outside autograd.
    """
    if running_mean is None:
        return
    f64 = torch.float64
    sigma = torch.sqrt(running_var.to(f64) + eps)                    # σ    (C,)
    sigma_b = torch.sqrt(var.to(f64) + eps)                          # σ_B  (C,)
    sigma = sigma + momentum * (sigma_b - sigma)
    running_mean.add_(mean.to(f64).sub(running_mean.to(f64)).mul(momentum).to(running_mean.dtype))
    running_var.copy_((sigma * sigma - eps).clamp_min(0.0))


def batch_renorm(input, running_mean, running_var, weight=None, bias=None, training=False,
                 momentum=0.1, eps=1e-5, r_max=3.0, d_max=5.0):
    r"""Batch Renormalization (Ioffe, 2017) over the channel dimension (dim 1).

    Training, with the mini-batch mean μ_B, σ_B = sqrt(σ²_B + ε) (biased σ²_B) and the
    running μ, σ = sqrt(running_var + ε):

    .. math::
        r = \mathrm{clip}_{[1/r_{max},\,r_{max}]}\!\left(\frac{\sigma_B}{\sigma}\right),\quad
        d = \mathrm{clip}_{[-d_{max},\,d_{max}]}\!\left(\frac{\mu_B - \mu}{\sigma}\right),\quad
        y = \gamma\left(\frac{x - \mu_B}{\sigma_B}\, r + d\right) + \beta

    r and d are constants in the backward pass (stop-gradient), then μ and σ move
    towards μ_B and σ_B by ``momentum`` (see :func:`update_running_renorm_stats`).
    Evaluation: y = γ·(x − μ)/σ + β, exactly Batch Normalization's Alg. 2.
    With ``r_max=1, d_max=0`` this is :func:`batch_norm` except for the running σ update.

    Args:
        input: ``(N, C, *)`` floating point.
        running_mean, running_var: ``(C,)`` buffers (σ² − ε convention for the variance).
        weight, bias: γ, β or ``None``.
        training: batch statistics with corrections, and update the running ones.
        momentum: α, weight of the new batch (PyTorch convention).
        eps: ε.
        r_max, d_max: the clipping limits (a schedule is kept by the modules,
            :class:`bnlab.BatchRenorm2d`).

    Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in
    Batch-Normalized Models", NeurIPS 2017.
    """
    check_input(input, running_mean, running_var, weight, bias, training, eps)
    if not r_max >= 1.0 or not d_max >= 0.0:
        raise ValueError(f"batch_renorm: need r_max >= 1 and d_max >= 0, got r_max={r_max}, d_max={d_max}")
    if not training:
        return batch_norm_eval(input, running_mean, running_var, weight, bias, eps)
    y, mean, var = batch_renorm_train(input, weight, bias, eps, running_mean, running_var, r_max, d_max)
    if count_per_channel(input) > 0:
        update_running_renorm_stats(running_mean, running_var, mean, var, eps, momentum)
    return y


# ---------------------------------------------------------------------------------------
# Ghost Batch Normalization (Hoffer, Hubara & Soudry, 2017)
# ---------------------------------------------------------------------------------------

def check_virtual_batch_size(virtual_batch_size) -> None:
    """Raise ``ValueError`` unless ``virtual_batch_size`` is a positive int (not a bool)."""
    if isinstance(virtual_batch_size, bool) or not isinstance(virtual_batch_size, int) or virtual_batch_size < 1:
        raise ValueError(f"virtual_batch_size must be a positive int, got {virtual_batch_size!r}")


def ghost_sizes(input, virtual_batch_size):
    """Sizes (along dim 0) of the ghost batches of ``input``.

    Consecutive slices of ``virtual_batch_size`` samples; the last one holds the
    remainder. A remainder with a single value per channel (one sample, no spatial
    positions) cannot be normalized on its own and is merged into the previous
    ghost batch. ``virtual_batch_size >= N`` gives one ghost batch: plain BN.
    """
    check_virtual_batch_size(virtual_batch_size)
    n = input.shape[0]
    if n <= virtual_batch_size:
        return [n]
    sizes = [virtual_batch_size] * (n // virtual_batch_size)
    rest = n - sum(sizes)
    if rest:
        per_sample = count_per_channel(input) // n                  # spatial positions per sample
        if rest * per_sample == 1:
            sizes[-1] += rest
        else:
            sizes.append(rest)
    return sizes


def ghost_batch_norm_train(input, weight, bias, eps, virtual_batch_size, running_mean=None, running_var=None,
                           num_batches_tracked=None, momentum=0.1, guard=True):
    """Alg. 1 applied to each ghost batch: returns ``(y, oks)``.

    With running statistics, each ghost batch k is folded into them in order (one
    moving-average step each, guarded on its own): ``oks[k]`` is its guard's verdict
    (a 0-d bool tensor; True without running statistics).
    """
    sizes = ghost_sizes(input, virtual_batch_size)
    chunks = [input] if len(sizes) == 1 else torch.split(input, sizes, dim=0)     # (n_k, C, *)
    ys, oks = [], []
    for chunk in chunks:
        if running_mean is None:
            y_k = batch_norm_train(chunk, weight, bias, eps)[0]
            ok = torch.ones((), dtype=torch.bool, device=input.device)
        else:
            y_k, ok = batch_norm_train_tracked(chunk, weight, bias, running_mean, running_var,
                                               num_batches_tracked, momentum, eps, guard)
        ys.append(y_k)
        oks.append(ok)
    return (ys[0] if len(ys) == 1 else torch.cat(ys, dim=0)), oks


def ghost_batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
                     momentum=0.1, eps=1e-5, virtual_batch_size=32):
    r"""Ghost Batch Normalization (Hoffer, Hubara & Soudry, 2017).

    Training: the batch is cut along dim 0 into ghost batches of
    ``virtual_batch_size`` samples (:func:`ghost_sizes`) and each is normalized with
    its own statistics (Alg. 1):

    .. math:: y_k = \gamma \frac{x_k - \mu_{B_k}}{\sqrt{\sigma^2_{B_k} + \epsilon}} + \beta

    The running statistics are updated once per ghost batch, in order (ghost batch
    0 first), each time with ``momentum`` and its own unbiased variance
    ``m_k/(m_k − 1)·σ²_{B_k}``. A ghost size ``>= N`` is exactly :func:`batch_norm`.
    Evaluation: the population statistics, as Batch Normalization.

    Hoffer, Hubara & Soudry, "Train longer, generalize better: closing the
    generalization gap in large batch training of neural networks", NeurIPS 2017.
    """
    check_input(input, running_mean, running_var, weight, bias, training, eps)
    if not training:
        return batch_norm_eval(input, running_mean, running_var, weight, bias, eps)
    return ghost_batch_norm_train(input, weight, bias, eps, virtual_batch_size, running_mean, running_var,
                                  None, momentum, guard=False)[0]
