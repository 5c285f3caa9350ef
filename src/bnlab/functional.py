"""Functional Batch Normalization (Ioffe & Szegedy, 2015), written from scratch.

``batch_norm`` has the signature and semantics of ``torch.nn.functional.batch_norm``
but none of its code: the math is Algorithm 1 (training: batch statistics) and
Algorithm 2 (inference: population statistics), the gradient the closed form of
Section 3, both in :mod:`bnlab._autograd`; the kernels are chosen by
:func:`bnlab.set_backend`.
"""
from __future__ import annotations

import torch

from ._autograd import BatchNormEval, BatchNormTrain
from ._stats import count_per_channel, unbiased_from_biased

__all__ = ["batch_norm", "check_input", "update_running_stats", "batch_norm_train", "batch_norm_eval"]

_HALF = (torch.float16, torch.bfloat16)


def check_input(input, running_mean=None, running_var=None, weight=None, bias=None, training=False):
    """Raise a clear error for any argument ``batch_norm`` cannot use.

    Called before anything is computed or updated, so that a call that raises
    leaves running statistics untouched.
    """
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"batch_norm: input must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(
            f"batch_norm: expected a floating-point input, got dtype {input.dtype}"
            " (integer, bool and complex tensors cannot be normalized)"
        )
    if input.dim() < 2:
        raise ValueError(f"batch_norm: expected at least 2D input (N, C, *), got {input.dim()}D input")
    c = input.shape[1]
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: running_mean and running_var must be given together or both be None")
    if not training and running_mean is None:
        raise ValueError("batch_norm: running_mean and running_var must be defined in evaluation mode")
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"batch_norm: {name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.numel() != c:
            raise ValueError(
                f"batch_norm: {name} should contain {c} elements not {t.numel()} "
                f"(the input has {c} channels at dim 1; is num_features right?)"
            )
        if t.device != input.device:
            raise RuntimeError(
                f"batch_norm: {name} is on {t.device} but the input is on {input.device}; "
                "move the module and the input to the same device"
            )
        if t.dtype != input.dtype and not (input.dtype in _HALF and t.dtype == torch.float32):
            raise TypeError(
                f"batch_norm: {name} has dtype {t.dtype} but the input has dtype {input.dtype}; "
                "parameters and statistics must share the input's dtype (or be float32 for "
                "float16/bfloat16 input)"
            )
    if training:
        m = count_per_channel(input)
        if m == 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {input.size()}"
            )


@torch.no_grad()
def update_running_stats(running_mean, running_var, mean, var, m, momentum):
    """Exponential moving average of the batch statistics (Alg. 2's population estimate).

    running_mean ← (1 − momentum)·running_mean + momentum·μ_B
    running_var  ← (1 − momentum)·running_var  + momentum·m/(m−1)·σ²_B

    In place and outside autograd: the buffers never carry graph history. A batch
    with ``m == 0`` values per channel changes nothing (as in PyTorch).
    """
    if running_mean is None or m == 0:
        return
    unbiased = unbiased_from_biased(var, m)
    running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
    running_var.mul_(1.0 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


def batch_norm_train(input, weight, bias, eps):
    """Alg. 1 on a checked input: returns ``(y, μ_B, σ²_B)``, the statistics detached."""
    return BatchNormTrain.apply(input, weight, bias, eps)


def batch_norm_eval(input, mean, var, weight, bias, eps):
    """Alg. 2's inference transform with the given constant statistics."""
    return BatchNormEval.apply(input, mean.detach(), var.detach(), weight, bias, eps)


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
    check_input(input, running_mean, running_var, weight, bias, training)
    if training:
        y, mean, var = batch_norm_train(input, weight, bias, eps)
        update_running_stats(running_mean, running_var, mean, var, count_per_channel(input), momentum)
        return y
    return batch_norm_eval(input, running_mean, running_var, weight, bias, eps)
