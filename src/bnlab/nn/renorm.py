"""Batch Renormalization layers (Ioffe, 2017) with the paper's r_max / d_max schedule.

The math lives in :func:`bnlab.functional.batch_renorm_train` and
:func:`bnlab.functional.update_running_renorm_stats` (their TorchScript forms in
:mod:`bnlab.nn._renorm_script`); this module owns the schedule (:class:`RenormSchedule`)
and the mode logic inherited from bnlab's ``_BatchNorm`` (statistics policy, non-finite guard).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import functional as F
from .._stats import count_per_channel
from ._renorm_script import (script_count, script_correction, script_limits, script_mean_var, script_stats_dtype,
                             script_track)
from .batchnorm import _BatchNorm, _dim_error, _Input1d, _Input2d, _Input3d

__all__ = ["RenormSchedule", "BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d", "graph_batch_renorm"]


def _ramp(step: int, start: int, end: int) -> float:
    """Linear ramp: 0 before ``start``, (step − start)/(end − start) clipped to [0, 1] after.

    ``end <= start`` jumps to 1 at ``start``.
    """
    if step < start:
        return 0.0
    if end <= start:
        return 1.0
    return min((step - start) / (end - start), 1.0)


@dataclass(frozen=True)
class RenormSchedule:
    """The r_max / d_max schedule of Batch Renorm (Ioffe 2017, Sec. 4).

    Plain Batch Normalization (r_max = 1, d_max = 0) for the first ``warmup_steps``
    steps (t < warmup); then
    both limits relax linearly and reach their final values at ``r_max_steps`` and
    ``d_max_steps`` and stay there (the ramp is clipped, so a limit never exceeds
    its final value):

        r_max(t) = 1 + (r_max − 1)·clip((t − warmup)/(r_max_steps − warmup), 0, 1)
        d_max(t) =      d_max     ·clip((t − warmup)/(d_max_steps − warmup), 0, 1)

    The defaults are the paper's: BN for 5k steps, r_max = 3 reached at 40k steps,
    d_max = 5 at 25k steps. ``warmup_steps=0, r_max_steps=0, d_max_steps=0`` gives the
    final limits from the first step.
    """

    r_max: float = 3.0
    d_max: float = 5.0
    warmup_steps: int = 5000
    r_max_steps: int = 40000
    d_max_steps: int = 25000

    def __post_init__(self) -> None:
        if not self.r_max >= 1.0:
            raise ValueError(f"r_max must be >= 1, got {self.r_max}")
        if not self.d_max >= 0.0:
            raise ValueError(f"d_max must be >= 0, got {self.d_max}")
        for name in ("warmup_steps", "r_max_steps", "d_max_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def limits(self, step):
        """``(r_max(t), d_max(t))`` at training step ``t``.

        ``step`` is an int, or a 0-d tensor in traced code (``torch.compile``, export,
        fake tensors), for which the limits come back as float64 0-d tensors computed
        without reading the step's value.
        """
        if isinstance(step, torch.Tensor):
            return script_limits(step, self.astuple())
        r = 1.0 + (self.r_max - 1.0) * _ramp(step, self.warmup_steps, self.r_max_steps)
        d = self.d_max * _ramp(step, self.warmup_steps, self.d_max_steps)
        return r, d

    def astuple(self) -> tuple[float, float, int, int, int]:
        """``(r_max, d_max, warmup_steps, r_max_steps, d_max_steps)``: the form TorchScript holds."""
        return (float(self.r_max), float(self.d_max), int(self.warmup_steps), int(self.r_max_steps),
                int(self.d_max_steps))


def graph_batch_renorm(input: Tensor, weight, bias, running_mean, running_var, num_batches_tracked,
                       ranks: tuple, use_batch: bool, update: bool, momentum, eps: float, guard: bool,
                       schedule: tuple) -> Tensor:
    """A Batch Renorm layer's forward as a function of its tensors and resolved configuration.

    What ``torch.fx.symbolic_trace`` of a bare layer records (see ``batchnorm._fx_root_forward``):
    the checks, the schedule at ``num_batches_tracked`` (read when the graph runs), the r/d
    corrections and the μ/σ averages, exactly as the layer's forward. ``schedule`` is
    :meth:`RenormSchedule.astuple`. The guard acts as a mask (a non-finite batch changes no
    buffer); a graph cannot count it in ``skipped_batches``.
    """
    _dim_error(input, ranks)
    F.check_input(input, running_mean, running_var, weight, bias, training=use_batch, eps=eps)
    if not use_batch:
        return F.batch_norm_eval(input, running_mean, running_var, weight, bias, eps)
    nbt = num_batches_tracked
    if running_mean is None or nbt is None:                          # no running statistics: plain BN
        return F.batch_norm_train(input, weight, bias, eps)[0]
    step = int(nbt) if F.is_concrete(nbt) else nbt
    r_max, d_max = RenormSchedule(*schedule).limits(step)
    y, mean, var = F.batch_renorm_train(input, weight, bias, eps, running_mean, running_var, r_max, d_max)
    if update:
        script_track(running_mean, running_var, nbt, mean, var, count_per_channel(input), momentum, eps, guard)
    return y


class _BatchRenorm(_BatchNorm):
    """Batch Renorm on top of bnlab's ``_BatchNorm`` (buffers, policy, guard)."""

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
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup_steps: int = 5000,
        r_max_steps: int = 40000,
        d_max_steps: int = 25000,
        bias: bool = True,
    ) -> None:
        self.schedule = RenormSchedule(r_max, d_max, warmup_steps, r_max_steps, d_max_steps)
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )

    def current_limits(self) -> tuple[float, float]:
        """``(r_max, d_max)`` in force for the next training batch.

        The schedule's step is ``num_batches_tracked`` (batches folded into the
        running statistics), so it is saved and restored with the state_dict.
        Without running statistics the layer is plain BN: ``(1.0, 0.0)``.
        """
        nbt = self.num_batches_tracked
        if nbt is None:
            return 1.0, 0.0
        return self.schedule.limits(int(nbt) if F.is_concrete(nbt) else nbt)

    def __prepare_scriptable__(self):
        """Called by ``torch.jit.script``: the schedule as a plain tuple TorchScript can hold."""
        self._script_schedule = self.schedule.astuple()
        return self

    def _scripted_forward(self, input: Tensor) -> Tensor:
        """TorchScript's forward: the eager training step (schedule, r/d, μ/σ averages) op for op.

        The step of the schedule is read as a tensor (no ``.item()``); the guard is a mask
        (a non-finite batch changes no buffer nor ``num_batches_tracked``; it is not counted
        in ``skipped_batches``, Python-side bookkeeping, as in every scripted bnlab layer).
        """
        if input.dim() < 2:
            raise ValueError("expected at least 2D input")
        use_batch, update = self._scripted_policy()
        if not use_batch:
            return self._scripted_eval(input)
        m = script_count(input)
        if m == 1:
            raise ValueError("Expected more than 1 value per channel when training")
        rm = self.running_mean
        rv = self.running_var
        nbt = self.num_batches_tracked
        weight = self.weight
        bias = self.bias
        if rm is not None and rv is not None and nbt is not None:
            # y = γ·((x − μ_B)/σ_B · r + d) + β = BN with γ' = γ·r, β' = γ·d + β (r, d constants)
            r_max, d_max = script_limits(nbt, self._script_schedule)
            mean_b, var_b = script_mean_var(input.detach())         # (C,) float64
            r, d = script_correction(mean_b, var_b, rm, rv, self.eps, r_max, d_max)
            pdt = weight.dtype if weight is not None else script_stats_dtype(input.dtype)
            r, d = r.to(pdt), d.to(pdt)
            if weight is not None:
                w_eff = weight * r
                b_eff = weight * d
            else:
                w_eff = r
                b_eff = d
            if bias is not None:
                b_eff = b_eff + bias
            y, mean, var, _ok = torch.ops.bnlab.bn_train(input, w_eff, b_eff, None, None, None, 0.0, self.eps,
                                                         False, "identity", 0.0)
            if update:
                script_track(rm, rv, nbt, mean, var, m, self.momentum, self.eps, self.nonfinite_guard)
            return y
        # no running statistics: plain Batch Normalization (r = 1, d = 0)
        return torch.ops.bnlab.bn_train(input, weight, bias, None, None, None, 0.0, self.eps, False,
                                        "identity", 0.0)[0]

    def _fx_graph_call(self):
        """``(graph_batch_renorm, args after the input)``: the graph of a bare-layer ``torch.fx`` trace."""
        if type(self)._forward_impl is not _BatchRenorm._forward_impl or not self._fx_plain_ranks():
            return None
        w, b, rm, rv, nbt = self._fx_state()
        return graph_batch_renorm, (w, b, rm, rv, nbt, self._ranks, self._batch_stats_policy(rm, rv),
                                    self._updates_running_stats(), self.momentum, self.eps, self.nonfinite_guard,
                                    self.schedule.astuple())

    def _forward_impl(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        use_batch = self._uses_batch_stats()
        F.check_input(input, self.running_mean, self.running_var, self.weight, self.bias, training=use_batch,
                      eps=self.eps)
        if not use_batch:
            # inference: y = γ·(x − μ)/σ + β with σ = sqrt(running_var + ε)
            return F.batch_norm_eval(input, self.running_mean, self.running_var, self.weight, self.bias, self.eps)
        r_max, d_max = self.current_limits()
        # y = γ·((x − μ_B)/σ_B · r + d) + β, r and d constants (stop-gradient)
        y, mean, var = F.batch_renorm_train(
            input, self.weight, self.bias, self.eps, self.running_mean, self.running_var, r_max, d_max
        )
        if self._updates_running_stats():
            self._track(mean, var, count_per_channel(input))
        return y

    def _update_buffers(self, mean: Tensor, var: Tensor, m: int, factor: float) -> None:
        # μ ← μ + α(μ_B − μ),  σ ← σ + α(σ_B − σ)   (stored as running_var = σ² − ε)
        if m > 0:
            F.update_running_renorm_stats(self.running_mean, self.running_var, mean, var, self.eps, factor)

    def extra_repr(self) -> str:
        s = self.schedule
        return (
            super().extra_repr()
            + f", r_max={s.r_max}, d_max={s.d_max}, warmup_steps={s.warmup_steps}, "
            f"r_max_steps={s.r_max_steps}, d_max_steps={s.d_max_steps}"
        )


_DOC = r"""Batch Renormalization over a {ndim} input (Ioffe, 2017).

    In training mode, with the mini-batch mean μ_B, σ_B = sqrt(σ²_B + ε) (biased
    σ²_B, per channel over {over}) and the running μ and σ:

    .. math::
        r = \mathrm{{clip}}_{{[1/r_{{max}},\,r_{{max}}]}}\left(\frac{{\sigma_B}}{{\sigma}}\right),\quad
        d = \mathrm{{clip}}_{{[-d_{{max}},\,d_{{max}}]}}\left(\frac{{\mu_B - \mu}}{{\sigma}}\right),\quad
        y = \gamma\left(\frac{{x - \mu_B}}{{\sigma_B}}\, r + d\right) + \beta

    r and d are treated as constants by the backward pass (the paper's
    stop_gradient), so the gradient is Batch Normalization's with γ·r. Afterwards
    ``μ ← μ + α(μ_B − μ)`` and ``σ ← σ + α(σ_B − σ)`` with α = ``momentum``. In eval
    mode ``y = γ·(x − μ)/σ + β``.

    Conventions: σ is stored as ``running_var = σ² − ε`` so that
    ``σ = sqrt(running_var + ε)``; buffers, state_dict keys and the eval transform are
    exactly those of ``BatchNorm`` (a BN checkpoint loads, :func:`bnlab.fold_batchnorm`
    and :func:`bnlab.convert_model`-style tools work), but the running σ is the
    paper's moving average of σ_B (biased variance), not BN's unbiased variance.
    Momentum follows PyTorch (weight of the new batch; 0.1 = Keras 0.9; ``None`` =
    cumulative average).

    Schedule (:class:`RenormSchedule`): plain BN (r_max = 1, d_max = 0) for
    ``warmup_steps`` batches, then linear relaxation to ``r_max`` at ``r_max_steps``
    and ``d_max`` at ``d_max_steps``; defaults are the paper's (5k, 3 at 40k, 5 at
    25k). The step is ``num_batches_tracked``. Without running statistics
    (``track_running_stats=False``) the layer is plain Batch Normalization.

    Args:
        num_features: C.
        eps, momentum, affine, track_running_stats, bias: as ``BatchNorm``.
        r_max, d_max: final clipping limits. Default: 3.0, 5.0.
        warmup_steps, r_max_steps, d_max_steps: the schedule. Default: 5000, 40000, 25000.

    Shape:
        - Input: {shape}
        - Output: the same shape.

    Example::

        >>> m = bnlab.{name}(100, warmup_steps=1000, r_max_steps=20000, d_max_steps=10000)
        >>> y = m(torch.randn({example}))

    Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in
    Batch-Normalized Models", NeurIPS 2017; Ioffe & Szegedy, ICML 2015.
    """


class BatchRenorm1d(_Input1d, _BatchRenorm, nn.BatchNorm1d):
    __doc__ = _DOC.format(name="BatchRenorm1d", ndim="2D or 3D", over="(N, L)", shape="(N, C) or (N, C, L)",
                          example="20, 100")


class BatchRenorm2d(_Input2d, _BatchRenorm, nn.BatchNorm2d):
    __doc__ = _DOC.format(name="BatchRenorm2d", ndim="4D", over="(N, H, W)", shape="(N, C, H, W)",
                          example="20, 100, 35, 45")


class BatchRenorm3d(_Input3d, _BatchRenorm, nn.BatchNorm3d):
    __doc__ = _DOC.format(name="BatchRenorm3d", ndim="5D", over="(N, D, H, W)", shape="(N, C, D, H, W)",
                          example="20, 100, 35, 45, 10")
