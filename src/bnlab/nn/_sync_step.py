"""SyncBatchNorm's synchronized training step: the autograd Function and the collective step.

:class:`SyncBatchNormFunction` normalizes with the group's statistics and all-reduces the
backward's sums; :func:`sync_batch_norm_train` is the whole step (all-gather, normalize,
running statistics), which eager :class:`bnlab.SyncBatchNorm`, its bare-layer ``torch.fx``
graph and the operator ``bnlab::sync_batch_norm_train`` (what TorchScript and
``torch.jit.trace`` call and save) all run. The collectives are in :mod:`bnlab.nn._dist_stats`.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .. import functional as F
from .. import kernels
from .._stats import broadcast_shape, compute_dtype, stats_dtype
from ..kernels import reference
from . import _dist_stats as ds

__all__ = ["SyncBatchNormFunction", "sync_batch_norm_train"]


class SyncBatchNormFunction(torch.autograd.Function):
    """y = γ·(x − μ_B)·σ⁻¹ + β with the global μ_B, σ²_B of the whole group (Alg. 1).

    ``forward(x, weight, bias, mean, var, m, eps, group) -> y``. ``mean``/``var``
    are the merged statistics of the concatenated batch (``m`` values per channel)
    computed by :func:`bnlab.nn._dist_stats.global_mean_var`; they enter as
    constants because the backward's closed form already contains their
    dependence on ``x``:

        dx = γ·σ⁻¹/m · (m·dy − Σdy − x̂·Σdy·x̂),   sums over *all* ranks (one all-reduce)
        dγ = Σ dy·x̂,  dβ = Σ dy                   sums over *this* rank only

    The parameter gradients are this rank's part; summing them over ranks (what
    DistributedDataParallel's all-reduce does, up to its 1/W averaging) gives the
    gradient of one-process BN on the concatenated batch. Every rank, also one
    with an empty shard, joins the all-reduce whenever the input needs a gradient.
    The backward is not itself differentiable (no double backward across ranks).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, m, eps, group):
        sd = stats_dtype(x.dtype)
        mean, var = mean.to(sd), var.to(sd)
        # Alg. 1 lines 3-4 with the group's statistics: the inference transform's kernel does exactly this
        if x.numel() == 0:
            y = torch.empty_like(x)                                  # an empty shard: nothing to normalize
        else:
            y = kernels.bn_eval(x, mean, var, weight, bias, float(eps))
        invstd = torch.rsqrt(var + eps)                              # σ⁻¹ = 1/sqrt(σ²_B + ε)   (C,)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.m, ctx.group = m, group
        ctx.param_dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, mean, invstd = ctx.saved_tensors
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        sum_dy, sum_dy_xhat = ds.grad_sums(dy, x, mean, invstd)      # this rank's (C,) float64
        wd, bd = ctx.param_dtypes
        dw = sum_dy_xhat.to(wd) if need_dw and weight is not None else None
        db = sum_dy.to(bd) if need_db and bd is not None else None
        dx = None
        if need_dx:
            # Section 3 needs the sums over the whole batch: Σ over ranks (collective, empty shards too)
            sum_dy, sum_dy_xhat = ds.all_reduce_sum(sum_dy, sum_dy_xhat, group=ctx.group)
            m = ctx.m
            cd = compute_dtype(x.dtype)
            shape = broadcast_shape(x)                               # (1, C, 1, ...)
            g = invstd.to(torch.float64)
            if weight is not None:
                g = g * weight.to(torch.float64)                     # γ·σ⁻¹
            if m > 0:
                dyc = dy.to(cd)
                xhat = (x.to(cd) - mean.to(cd).view(shape)) * invstd.to(cd).view(shape)    # (N, C, *)
                # dx = γ·σ⁻¹ · (dy − Σdy/m − x̂·Σdy·x̂/m), the global m
                mean_dy = (sum_dy / m).to(cd).view(shape)
                mean_dy_xhat = (sum_dy_xhat / m).to(cd).view(shape)
                dx = g.to(cd).view(shape) * (dyc - mean_dy - xhat * mean_dy_xhat)
            else:
                dx = dy.to(cd).clone()
            dx = dx.to(dtype=x.dtype, memory_format=torch.preserve_format)
        return dx, dw, db, None, None, None, None, None


def sync_batch_norm_train(input, weight, bias, running_mean, running_var, num_batches_tracked, momentum,
                          eps: float, guard: bool, update: bool, group):
    """Alg. 1 over the batch made of every rank's shard (collective): returns ``(y, ok)``.

    One all-gather of the shards' ``(m_r, μ_r, M2_r)`` gives the global μ_B, σ²_B over
    ``m = Σ m_r`` values; :class:`SyncBatchNormFunction` normalizes (its backward
    all-reduces Σdy, Σdy·x̂). With ``update`` the running statistics take the global μ_B
    and unbiased ``m/(m−1)·σ²_B`` (identical on every rank), in place, guarded: ``ok``
    (0-d bool) is False when the statistics were not finite and nothing changed.
    Every rank of ``group`` must call it. Eager SyncBatchNorm and the operator
    ``bnlab::sync_batch_norm_train`` (scripted SyncBatchNorm) both run it.
    """
    # dtype/device/size checks before any collective or state change; the "more than
    # one value per channel" check concerns the global m (below), so check an empty view
    F.check_input(input.narrow(0, 0, 0), running_mean, running_var, weight, bias, training=True)
    m, mean, var = ds.global_mean_var(input, group)                  # collective; (C,) float64
    if m == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got 1 over the process group "
            f"(this rank's input size {tuple(input.shape)})"
        )
    sd = stats_dtype(input.dtype)
    mean, var = mean.to(sd), var.to(sd)                              # as the local path's statistics
    y = SyncBatchNormFunction.apply(input, weight, bias, mean, var, m, eps, group)
    if not update:
        return y, torch.ones((), dtype=torch.bool, device=input.device)
    # running ← running + α·(statistic − running), the global m/(m−1)·σ²_B: bn_train's own update step
    ok = reference.update_running_stats(running_mean, running_var, num_batches_tracked, mean, var, m, momentum, guard)
    return y, ok


def _sync_batch_norm_train_op(input, weight, bias, running_mean, running_var, num_batches_tracked, momentum,
                              eps, guard, update, group_name):
    """Kernel of ``bnlab::sync_batch_norm_train``: the group by name, then :func:`sync_batch_norm_train`."""
    group = ds.sync_group(ds.resolve_group(group_name))
    if group is None:
        raise RuntimeError("bnlab::sync_batch_norm_train: no process group of more than one rank to synchronize over")
    return sync_batch_norm_train(input, weight, bias, running_mean, running_var, num_batches_tracked, momentum,
                                 eps, guard, update, group)[0]


# The two questions scripted SyncBatchNorm asks the Python side, as operators TorchScript can call
# and save: how many ranks would this step synchronize over, and the synchronized step itself
# (a Python kernel above autograd: the autograd.Function and the collectives run as in eager mode).
_LIB = torch.library.Library("bnlab", "FRAGMENT")
_LIB.define("sync_group_size(Tensor input, str group_name) -> int")
_LIB.impl("sync_group_size", ds.group_size, "CompositeExplicitAutograd")
_LIB.define("sync_batch_norm_train(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
            "Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, float? momentum, float eps, bool guard, "
            "bool update, str group_name) -> Tensor")
_LIB.impl("sync_batch_norm_train", _sync_batch_norm_train_op, "CompositeImplicitAutograd")
