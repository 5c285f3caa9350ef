"""Ghost Batch Normalization layers (Hoffer, Hubara & Soudry, 2017).

The math is :func:`bnlab.functional.ghost_batch_norm_train`; the mode logic
(statistics policy, non-finite guard, running statistics) is bnlab's ``_BatchNorm``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import functional as F
from .batchnorm import _BatchNorm, _dim_error, _Input1d, _Input2d, _Input3d, fx_leaf

__all__ = ["GhostBatchNorm1d", "GhostBatchNorm2d", "GhostBatchNorm3d"]


@fx_leaf
def graph_ghost_batch_norm(input: Tensor, weight, bias, running_mean, running_var, num_batches_tracked,
                           ranks: tuple, use_batch: bool, update: bool, momentum, eps: float, guard: bool,
                           virtual_batch_size: int) -> Tensor:
    """A Ghost BN layer's forward as a function of its tensors and resolved configuration.

    What ``torch.fx.symbolic_trace`` of a bare layer records (see ``batchnorm._fx_root_forward``).
    """
    _dim_error(input, ranks)
    F.check_input(input, running_mean, running_var, weight, bias, training=use_batch, eps=eps)
    if not use_batch:
        return F.batch_norm_eval(input, running_mean, running_var, weight, bias, eps)
    if not update:
        return F.ghost_batch_norm_train(input, weight, bias, eps, virtual_batch_size)[0]
    return F.ghost_batch_norm_train(input, weight, bias, eps, virtual_batch_size, running_mean, running_var,
                                    num_batches_tracked, momentum, guard)[0]


class _GhostBatchNorm(_BatchNorm):
    """Ghost BN on top of bnlab's ``_BatchNorm``."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        virtual_batch_size: int = 32,
        bias: bool = True,
    ) -> None:
        F.check_virtual_batch_size(virtual_batch_size)
        self.virtual_batch_size = virtual_batch_size
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )

    def _forward_impl(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        use_batch = self._uses_batch_stats()
        F.check_input(input, self.running_mean, self.running_var, self.weight, self.bias, training=use_batch,
                      eps=self.eps)
        if not use_batch:
            # Alg. 2: the population statistics, exactly as BatchNorm
            return F.batch_norm_eval(input, self.running_mean, self.running_var, self.weight, self.bias, self.eps)
        # Alg. 1 on each ghost batch x_k = x[s_k : s_k + n_k]           # (n_k, C, *)
        if not self._updates_running_stats():
            return F.ghost_batch_norm_train(input, self.weight, self.bias, self.eps, self.virtual_batch_size)[0]
        # one moving-average step per ghost batch, in order (each one guarded)
        y, oks = F.ghost_batch_norm_train(
            input, self.weight, self.bias, self.eps, self.virtual_batch_size, self.running_mean,
            self.running_var, self.num_batches_tracked, self.momentum, self.nonfinite_guard)
        for ok in oks:
            self._note_guard(ok)
        return y

    def _fx_graph_call(self):
        if type(self)._forward_impl is not _GhostBatchNorm._forward_impl or not self._fx_plain_ranks():
            return None
        w, b, rm, rv, nbt = self._fx_state()
        return graph_ghost_batch_norm, (w, b, rm, rv, nbt, self._ranks, self._batch_stats_policy(rm, rv),
                                        self._updates_running_stats(), self.momentum, self.eps,
                                        self.nonfinite_guard, self.virtual_batch_size)

    def _scripted_forward(self, input: Tensor) -> Tensor:
        """TorchScript's forward: ghost batches of ``virtual_batch_size`` through ``bnlab::bn_train``."""
        use_batch, update = self._scripted_policy()
        if not use_batch:
            return self._scripted_eval(input)
        rm = self.running_mean
        rv = self.running_var
        # the sizes of ghost_sizes(): full ghost batches, the remainder merged if it has one value
        n, k = input.shape[0], self.virtual_batch_size
        per_sample = input.numel() // max(n * input.shape[1], 1)
        sizes = [k] * (n // k) if n > k else [n]
        rest = n - sum(sizes)
        if rest > 0:
            if rest * per_sample == 1:
                sizes[-1] += rest
            else:
                sizes.append(rest)
        ys = []
        for chunk in torch.split(input, sizes, dim=0):
            if update and rm is not None:
                y = torch.ops.bnlab.bn_train(chunk, self.weight, self.bias, rm, rv, self.num_batches_tracked,
                                             self.momentum, self.eps, self.nonfinite_guard, "identity", 0.0)[0]
            else:
                y = torch.ops.bnlab.bn_train(chunk, self.weight, self.bias, None, None, None, 0.0, self.eps,
                                             False, "identity", 0.0)[0]
            ys.append(y)
        return torch.cat(ys, dim=0)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", virtual_batch_size={self.virtual_batch_size}"


_DOC = r"""Ghost Batch Normalization over a {ndim} input (Hoffer et al., 2017).

    In training mode the batch is cut along dim 0 into consecutive *ghost batches*
    of ``virtual_batch_size`` samples (the last one holds the remainder; a remainder
    with a single value per channel is merged into the previous ghost batch), and
    each ghost batch k is normalized with its own statistics (Alg. 1 of Ioffe &
    Szegedy), per channel over {over}:

    .. math::
        y_k = \gamma \frac{{x_k - \mu_{{B_k}}}}{{\sqrt{{\sigma^2_{{B_k}} + \epsilon}}}} + \beta

    Running statistics: updated **once per ghost batch, in order** (ghost batch 0
    first), each step ``running = (1 − momentum)·running + momentum·statistic`` with
    the ghost batch's unbiased variance ``m_k/(m_k − 1)·σ²_{{B_k}}``; so one forward of
    G ghost batches advances ``num_batches_tracked`` by G, and a non-finite ghost
    batch is skipped alone (``skipped_batches``). Eval mode is BatchNorm's Alg. 2.
    ``virtual_batch_size >= N`` is exactly BatchNorm (outputs, gradients, buffers).
    Momentum follows PyTorch (0.1 = Keras 0.9); the variance normalizing is biased.

    Args:
        num_features: C.
        eps, momentum, affine, track_running_stats, bias: as ``BatchNorm``.
        virtual_batch_size: samples per ghost batch (keyword-only). Default: 32.

    Shape:
        - Input: {shape}
        - Output: the same shape.

    Example::

        >>> m = bnlab.{name}(100, virtual_batch_size=16)
        >>> y = m(torch.randn({example}))      # 4 ghost batches of 16

    Hoffer, Hubara & Soudry, "Train longer, generalize better: closing the
    generalization gap in large batch training of neural networks", NeurIPS 2017;
    Ioffe & Szegedy, ICML 2015.
    """


class GhostBatchNorm1d(_Input1d, _GhostBatchNorm, nn.BatchNorm1d):
    __doc__ = _DOC.format(ndim="2D or 3D", over="(n_k, L)", shape="(N, C) or (N, C, L)", name="GhostBatchNorm1d",
                          example="64, 100")


class GhostBatchNorm2d(_Input2d, _GhostBatchNorm, nn.BatchNorm2d):
    __doc__ = _DOC.format(ndim="4D", over="(n_k, H, W)", shape="(N, C, H, W)", name="GhostBatchNorm2d",
                          example="64, 100, 8, 8")


class GhostBatchNorm3d(_Input3d, _GhostBatchNorm, nn.BatchNorm3d):
    __doc__ = _DOC.format(ndim="5D", over="(n_k, D, H, W)", shape="(N, C, D, H, W)", name="GhostBatchNorm3d",
                          example="64, 100, 4, 8, 8")
