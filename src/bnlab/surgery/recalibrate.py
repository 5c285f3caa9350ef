"""Recompute the population statistics of every BatchNorm layer (Alg. 2, steps 8-10).

After training, the running averages lag behind the final weights (they mix
statistics of earlier, different networks). Algorithm 2 replaces them by
estimates over mini-batches processed by the *final* network::

    E[x]   ← E_B[μ_B]                       (mean of the batch means)
    Var[x] ← m/(m − 1) · E_B[σ²_B]          (unbiased, mean of the batch variances)

``method="pooled"`` instead takes the exact mean and unbiased variance of all the
values seen, as if the batches were one (merged with Chan's formula).
"""
from __future__ import annotations

import itertools
import warnings

import torch
from torch import nn

from .._stats import channel_mean_var, count_per_channel, merge_mean_m2
from ..nn.batchnorm import _BatchNorm

__all__ = ["recalibrate"]

_METHODS = ("paper", "pooled")


class _Accumulator:
    """Per-channel statistics of one BN layer's inputs over the batches (float64)."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.batches = 0
        self.nonfinite = 0
        self.a = self.b = self.n = None   # paper: Σμ_B, Σ unbiased σ²; pooled: mean, M2, count

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        m = count_per_channel(x)
        if m == 0:
            return
        mean, var = channel_mean_var(x.detach())                    # μ_B, biased σ²_B   (C,) float64
        if not bool(torch.isfinite(mean).all() & torch.isfinite(var).all()):
            self.nonfinite += 1
            return
        self.batches += 1
        if self.method == "paper":
            unbiased = var * (m / (m - 1)) if m > 1 else var        # m/(m−1)·σ²_B
            if self.a is None:
                self.a, self.b = mean.clone(), unbiased.clone()
            else:
                self.a += mean
                self.b += unbiased
            return
        count = torch.full_like(mean, float(m))
        m2 = var * m                                                 # M2 = Σ (x − μ_B)²
        if self.n is None:
            self.n, self.a, self.b = count, mean, m2
        else:
            self.n, self.a, self.b = merge_mean_m2(self.n, self.a, self.b, count, mean, m2)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.method == "paper":
            # Alg. 2: E[x] = E_B[μ_B],  Var[x] = E_B[m/(m−1)·σ²_B]
            return self.a / self.batches, self.b / self.batches
        # pooled: the mean and the unbiased variance M2/(n − 1) of every value seen
        return self.a, self.b / (self.n - 1).clamp_min(1.0)


def _bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """BN layers with running statistics (torch or bnlab; FrozenBatchNorm is not one)."""
    return [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, _BatchNorm))
        and m.running_mean is not None and m.running_var is not None
    ]


def _first(batch):
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, dict):
        return next(iter(batch.values()))
    return batch


def recalibrate(model: nn.Module, batches, num_batches: int | None = None, method: str = "paper", device=None):
    """Recompute every BN layer's ``running_mean``/``running_var`` from ``batches``.

    The model runs forward (under ``no_grad``) on up to ``num_batches`` batches;
    every BatchNorm layer (torch's or bnlab's, Ghost/Renorm/Sync included) normalizes
    with the batch statistics, as in training, while a hook records the
    per-channel statistics of its input. Other modules keep their mode (call
    ``model.eval()`` first to switch Dropout off). Then:

    * ``method="paper"`` (Alg. 2): E[x] = mean of the batch means μ_B, Var[x] =
      mean of the unbiased batch variances m/(m−1)·σ²_B — for batches of equal
      size m exactly ``m/(m−1)·E_B[σ²_B]``. Equals PyTorch's cumulative running
      average (momentum ``None``) over the same batches.
    * ``method="pooled"``: the exact mean and unbiased variance of all the values
      the layer saw, i.e. BN's statistics of the concatenated batches.

    ``num_batches_tracked`` is left as it was. Batches whose statistics are not
    finite are left out (with a warning); a layer that saw no batch keeps its
    statistics. Afterwards every layer's ``momentum``, policy attributes and the
    training mode of every module are restored — also when a forward raises, in
    which case the running statistics are restored too and the error propagates.

    Args:
        model: the trained model (changed in place and returned).
        batches: an iterable of input tensors, or of tuples/lists/dicts whose first
            element is the input (``(x, y)`` from a DataLoader).
        num_batches: use at most this many batches (``None``: all).
        method: ``"paper"`` (default) or ``"pooled"``.
        device: move each input there first (``None``: as given).

    Returns:
        ``model``.

    Example::

        >>> model.eval()
        >>> bnlab.recalibrate(model, train_loader, num_batches=100)

    Ioffe & Szegedy, ICML 2015, Algorithm 2.
    """
    if method not in _METHODS:
        raise ValueError(f"recalibrate: method must be one of {_METHODS}, got {method!r}")
    if num_batches is not None and (isinstance(num_batches, bool) or int(num_batches) != num_batches or num_batches < 0):
        raise ValueError(f"recalibrate: num_batches must be a non-negative int or None, got {num_batches!r}")
    layers = _bn_layers(model)
    if not layers:
        warnings.warn("recalibrate: the model has no BatchNorm layer with running statistics", UserWarning, stacklevel=2)
        return model
    modes = [(m, m.training) for m in model.modules()]
    saved = []
    for _, bn in layers:
        buffers = {k: getattr(bn, k).detach().clone() for k in ("running_mean", "running_var", "num_batches_tracked")
                   if getattr(bn, k, None) is not None}
        policy = {k: getattr(bn, k) for k in ("use_batch_stats", "update_running_stats") if isinstance(bn, _BatchNorm)}
        saved.append((bn, bn.momentum, policy, buffers))
    accs = [_Accumulator(method) for _ in layers]
    hooks = []
    try:
        for (_, bn), acc in zip(layers, accs):
            # batch statistics normalize; the layer's own moving average is switched off
            bn.train()
            bn.momentum = 0.0
            if isinstance(bn, _BatchNorm):
                bn.use_batch_stats, bn.update_running_stats = True, False
            hooks.append(bn.register_forward_pre_hook(lambda _m, args, acc=acc: acc.add(args[0])))
        with torch.no_grad():
            # islice: never pulls a batch beyond num_batches from a loader / generator
            for batch in itertools.islice(batches, num_batches):
                x = _first(batch)
                model(x if device is None else x.to(device))
    except BaseException:
        for bn, _, _, buffers in saved:
            with torch.no_grad():
                for k, v in buffers.items():
                    getattr(bn, k).copy_(v)
        raise
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes:
            m.training = training
        for bn, momentum, policy, _ in saved:
            bn.momentum = momentum
            for k, v in policy.items():
                setattr(bn, k, v)
    unused, nonfinite = [], 0
    with torch.no_grad():
        for (name, bn), acc, (_, _, _, buffers) in zip(layers, accs, saved):
            for k, v in buffers.items():                             # undo anything the layers did themselves
                getattr(bn, k).copy_(v)
            nonfinite += acc.nonfinite
            if acc.batches == 0:
                unused.append(name)
                continue
            mean, var = acc.result()
            bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
            bn.running_var.copy_(var.to(bn.running_var.dtype))
    if nonfinite:
        warnings.warn(f"recalibrate: left out {nonfinite} non-finite batch statistic(s)", RuntimeWarning, stacklevel=2)
    if unused:
        warnings.warn(f"recalibrate: no batch reached {unused}; their statistics are unchanged", UserWarning, stacklevel=2)
    return model
