"""Batch Normalization layers: drop-in replacements for ``torch.nn.BatchNorm1d/2d/3d``.

``_NormBase`` owns parameters, buffers and their state_dict conventions;
``_BatchNorm`` owns the mode logic (which statistics normalize, which get updated);
the math is in :mod:`bnlab.functional`. Constructor, buffers, state_dict keys,
``_version`` and numbers match PyTorch's, so checkpoints load both ways.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch.nn import init

from .. import functional as F
from .._stats import count_per_channel

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class _NormBase(nn.Module):
    """Parameters (γ, β), buffers (running statistics) and their persistence."""

    # version 2 added num_batches_tracked (as in PyTorch); older checkpoints load with 0
    _version = 2
    __constants__ = ["track_running_stats", "momentum", "eps", "num_features", "affine"]

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
        bias: bool = True,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features <= 0:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if momentum is not None and not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(
                f"momentum must be in [0, 1] (PyTorch convention: weight of the new batch), got {momentum}"
            )
        if not eps >= 0:
            raise ValueError(f"eps must be non-negative, got {eps}")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory_kwargs))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_features, **factory_kwargs))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory_kwargs))
            self.register_buffer("running_var", torch.ones(num_features, **factory_kwargs))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, ``num_batches_tracked`` 0."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics, γ = 1 and β = 0."""
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}"
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        version = local_metadata.get("version", None)
        if (version is None or version < 2) and self.track_running_stats:
            # checkpoints written before num_batches_tracked existed load with a count of 0
            key = prefix + "num_batches_tracked"
            if key not in state_dict:
                nbt = self.num_batches_tracked
                state_dict[key] = (
                    nbt if nbt is not None and nbt.device != torch.device("meta")
                    else torch.tensor(0, dtype=torch.long)
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class _BatchNorm(_NormBase):
    """Mode logic shared by every bnlab BatchNorm layer.

    Two switches decide what a forward does, each ``None`` (follow the module's
    mode, as PyTorch does) or a bool that overrides it:

    * ``use_batch_stats`` — normalize with the mini-batch statistics (Alg. 1) rather
      than the running ones (Alg. 2). Default: in training mode, or when there are
      no running statistics.
    * ``update_running_stats`` — fold the batch statistics into the running ones.
      Default: in training mode when ``track_running_stats``. Only possible when
      batch statistics are computed.

    ``nonfinite_guard`` (default ``True``): a batch whose statistics are not finite
    (NaN/inf, e.g. an fp16 overflow) does not touch the running statistics nor
    ``num_batches_tracked``; ``skipped_batches`` counts such batches and the layer
    warns once. For finite input the behaviour is exactly PyTorch's.
    """

    # Policy defaults live on the class: an instance (or an old pickle) that never set
    # them reads these; assigning on an instance overrides them for that layer only.
    use_batch_stats: bool | None = None
    update_running_stats: bool | None = None
    nonfinite_guard: bool = True
    skipped_batches: int = 0
    _warned_nonfinite: bool = False

    def _uses_batch_stats(self) -> bool:
        if self.use_batch_stats is not None:
            return bool(self.use_batch_stats) or self.running_mean is None
        return self.training or (self.running_mean is None and self.running_var is None)

    def _updates_running_stats(self) -> bool:
        if self.running_mean is None:
            return False
        if self.update_running_stats is not None:
            return bool(self.update_running_stats)
        return self.training and self.track_running_stats

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        use_batch = self._uses_batch_stats()
        # every check happens before any state changes: a bad call leaves the buffers as they were
        F.check_input(input, self.running_mean, self.running_var, self.weight, self.bias, training=use_batch)
        if not use_batch:
            # Alg. 2: y = γ·(x − E[x])/sqrt(Var[x] + ε) + β with the population estimates
            return F.batch_norm_eval(input, self.running_mean, self.running_var, self.weight, self.bias, self.eps)
        # Alg. 1 with the mini-batch statistics μ_B, σ²_B
        y, mean, var = F.batch_norm_train(input, self.weight, self.bias, self.eps)
        if self._updates_running_stats():
            self._track(mean, var, count_per_channel(input))
        return y

    @torch.no_grad()
    def _track(self, mean: Tensor, var: Tensor, m: int) -> None:
        """Fold one batch's statistics into the running ones (in place, outside autograd)."""
        if (torch.compiler.is_compiling() and m > 0
                and type(self)._update_buffers is _BatchNorm._update_buffers):
            self._track_traceable(mean, var, m)
            return
        if m > 0 and self.nonfinite_guard and not bool(torch.isfinite(mean).all() & torch.isfinite(var).all()):
            self.skipped_batches += 1
            if not self._warned_nonfinite:
                self._warned_nonfinite = True
                warnings.warn(
                    f"{type(self).__name__}: a batch with non-finite statistics was not folded into "
                    "the running statistics (counted in .skipped_batches; set nonfinite_guard=False "
                    "to disable)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)           # cumulative moving average
        else:
            factor = self.momentum                                   # exponential moving average
        self._update_buffers(mean, var, m, factor)

    def _track_traceable(self, mean: Tensor, var: Tensor, m: int) -> None:
        """``_track`` without data-dependent Python branches, for ``torch.compile``/``export``.

        The guard becomes a mask: a non-finite batch leaves the buffers and the count
        as they were (``where``), but it cannot be counted in ``skipped_batches`` nor
        warned about from inside a compiled graph.
        """
        if self.nonfinite_guard:
            ok = torch.isfinite(mean).all() & torch.isfinite(var).all()
        else:
            ok = torch.ones((), dtype=torch.bool, device=mean.device)
        self.num_batches_tracked.add_(ok.long())
        rm, rv = self.running_mean, self.running_var
        if self.momentum is None:                                    # cumulative moving average
            w = ok.to(rm.dtype) / self.num_batches_tracked.clamp_min(1).to(rm.dtype)
        else:                                                        # exponential moving average
            w = ok.to(rm.dtype) * self.momentum
        unbiased = var * (m / (m - 1)) if m > 1 else var
        # running ← (1 − w)·running + w·statistic; a skipped batch contributes the running value itself
        rm.lerp_(torch.where(ok, mean.to(rm.dtype), rm), w)
        rv.lerp_(torch.where(ok, unbiased.to(rv.dtype), rv), w)

    def _update_buffers(self, mean: Tensor, var: Tensor, m: int, factor: float) -> None:
        """The moving-average step itself (variants such as Batch Renorm override it)."""
        F.update_running_stats(self.running_mean, self.running_var, mean, var, m, factor)


_DOC = r"""Batch Normalization over a {ndim} input (Ioffe & Szegedy, 2015).

    A drop-in replacement for ``torch.nn.{name}``: same constructor, parameters,
    buffers, state_dict and numbers, written from the paper.

    .. math::
        y = \frac{{x - \mathrm{{E}}[x]}}{{\sqrt{{\mathrm{{Var}}[x] + \epsilon}}}} \cdot \gamma + \beta

    The mean and variance are taken per channel over {over}. In training mode
    (Algorithm 1) they are the mini-batch mean μ_B and the *biased* variance
    σ²_B = (1/m) Σ (x_i − μ_B)², and the gradient is the closed form of Section 3.
    At the same time the running estimates are updated,
    ``running = (1 − momentum)·running + momentum·statistic``, with the *unbiased*
    ``m/(m−1)·σ²_B`` for the variance, as in Algorithm 2 and PyTorch. In eval mode
    the running estimates normalize (Algorithm 2's inference network).

    Note on momentum: PyTorch's convention, the weight of the *new* batch. The
    default 0.1 equals Keras/TensorFlow's ``momentum=0.9``. ``None``
    gives the cumulative average over all batches seen (``1/num_batches_tracked``).

    Args:
        num_features: C, the number of channels.
        eps: ε added to the variance for numerical stability. Default: 1e-5.
        momentum: weight of the new batch in the running average, or ``None`` for a
            cumulative average. Default: 0.1.
        affine: learn γ (init 1) and β (init 0). Default: ``True``.
        track_running_stats: keep running estimates (buffers ``running_mean``,
            ``running_var``, ``num_batches_tracked``); if ``False`` batch statistics
            are used in eval mode too. Default: ``True``.
        bias: learn β (keyword-only; with ``affine``). Default: ``True``.

    Shape:
        - Input: {shape}
        - Output: the same shape, dtype and memory format.

    Example::

        >>> m = bnlab.{name}(100)
        >>> y = m(torch.randn({example}))
    """


def _doc(name: str, ndim: str, over: str, shape: str, example: str) -> str:
    return _DOC.format(name=name, ndim=ndim, over=over, shape=shape, example=example)


def _dim_error(input, allowed: tuple[int, ...]) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(input).__name__}")
    if input.dim() not in allowed:
        want = " or ".join(f"{d}D" for d in allowed)
        raise ValueError(f"expected {want} input (got {input.dim()}D input)")


class _Input1d:
    """Input-rank check of the ``*1d`` layers: (N, C) or (N, C, L). Mixed in first."""

    def _check_input_dim(self, input: Tensor) -> None:
        _dim_error(input, (2, 3))


class _Input2d:
    """Input-rank check of the ``*2d`` layers: (N, C, H, W). Mixed in first."""

    def _check_input_dim(self, input: Tensor) -> None:
        _dim_error(input, (4,))


class _Input3d:
    """Input-rank check of the ``*3d`` layers: (N, C, D, H, W). Mixed in first."""

    def _check_input_dim(self, input: Tensor) -> None:
        _dim_error(input, (5,))


class BatchNorm1d(_Input1d, _BatchNorm):
    __doc__ = _doc("BatchNorm1d", "2D or 3D", "the batch (and length) dimensions", "(N, C) or (N, C, L)", "20, 100")


class BatchNorm2d(_Input2d, _BatchNorm):
    __doc__ = _doc("BatchNorm2d", "4D", "(N, H, W)", "(N, C, H, W)", "20, 100, 35, 45")


class BatchNorm3d(_Input3d, _BatchNorm):
    __doc__ = _doc("BatchNorm3d", "5D", "(N, D, H, W)", "(N, C, D, H, W)", "20, 100, 35, 45, 10")
