"""Moving averages of Batch Normalization's batch statistics, raw and bias-corrected.

Frameworks replace Algorithm 2's population statistics by an exponential moving average
updated at every training step (PyTorch convention: ``momentum`` m is the weight of the new
batch),

    r_t = (1 − m) · r_{t−1} + m · s_t,      r_0 = 0 (mean) or 1 (variance),

with ``s_t`` the batch mean or unbiased batch variance. After T steps the initial value still
carries weight (1 − m)^T: at m = 0.001 and T = 300 that is 0.74, so the average is "stale"
even for a network that never changed. The bias-corrected average (Kingma & Ba 2015, Sec. 3)
divides that weight out,

    r̂_T = (r_T − (1 − m)^T · r_0) / (1 − (1 − m)^T) = Σ_k w_k s_k / Σ_k w_k,   w_k = m (1 − m)^(T−k),

a normalized weighted mean of the batch statistics: what remains is the staleness that comes
from the network changing while the average was taken.

:class:`MovingAverages` keeps these averages for several momenta at once, from forward hooks
on every BN layer in training mode — one training run serves every momentum, since the
momentum never touches the weights.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

__all__ = ["MovingAverages", "bn_layers", "batch_statistics"]


def bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every layer that keeps running statistics (``running_mean``/``running_var``
    buffers and a ``momentum``: torch's and bnlab's BN, Ghost BN, Batch Renorm, SyncBN), in registration order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(getattr(m, "running_mean", None), Tensor)
            and isinstance(getattr(m, "running_var", None), Tensor) and hasattr(m, "momentum")]


def batch_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and unbiased variance of a BN input (N, C) or (N, C, *), in float64."""
    x = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)   # (C, N·∏spatial)
    mean = x.mean(1)
    var = ((x - mean[:, None]) ** 2).sum(1) / max(x.shape[1] - 1, 1)  # two-pass, unbiased
    return mean, var


class MovingAverages:
    """Raw and bias-corrected moving averages of every BN layer's batch statistics.

    Args:
        model: the network; a forward hook on each BN layer (see :func:`bn_layers`) records
            the statistics of its input on every forward in training mode.
        momenta: the momenta to average with (PyTorch convention, in (0, 1]).

    Call :meth:`remove` when training is over (before copying the model: a deep copy would
    carry the hooks along).
    """

    def __init__(self, model: nn.Module, momenta: Iterable[float]) -> None:
        self.momenta = tuple(float(m) for m in momenta)
        if not self.momenta or not all(0 < m <= 1 for m in self.momenta):
            raise ValueError(f"momenta must be in (0, 1], got {self.momenta}")
        self.steps = 0
        self._counted: set[str] = set()
        self._avg: dict[float, dict[str, list[Tensor]]] = {m: {} for m in self.momenta}
        self._handles = [layer.register_forward_hook(self._hook(name)) for name, layer in bn_layers(model)]
        self._names = [name for name, _ in bn_layers(model)]

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            if not module.training:
                return
            if name in self._counted:  # a layer seen twice: a new step began
                self._counted.clear()
            if not self._counted:
                self.steps += 1
            self._counted.add(name)
            mean, var = batch_statistics(inputs[0])
            for m, per_layer in self._avg.items():
                r = per_layer.setdefault(name, [torch.zeros_like(mean), torch.ones_like(var)])  # r_0 = 0, 1
                r[0].mul_(1 - m).add_(mean, alpha=m)     # r_t = (1 − m) r_{t−1} + m s_t
                r[1].mul_(1 - m).add_(var, alpha=m)
        return hook

    def remove(self) -> None:
        """Detach the hooks (the averages are kept)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def stats(self, momentum: float, corrected: bool = True) -> dict[str, tuple[Tensor, Tensor]]:
        """Layer name → (mean, variance), float64, at ``momentum``; bias-corrected by default."""
        if float(momentum) not in self._avg:
            raise KeyError(f"momentum {momentum} is not tracked; tracked: {self.momenta}")
        m = float(momentum)
        left = (1 - m) ** self.steps            # the weight still on r_0
        out = {}
        for name, (mean, var) in self._avg[m].items():
            if corrected and left < 1:
                mean, var = mean / (1 - left), (var - left) / (1 - left)   # r̂ = (r − (1−m)^T r_0) / (1 − (1−m)^T)
            out[name] = (mean.clone(), var.clone())
        return out

    def load_into(self, model: nn.Module, momentum: float, corrected: bool = True) -> nn.Module:
        """Write the averages at ``momentum`` into ``model``'s running buffers (same layer names)."""
        stats = self.stats(momentum, corrected)
        with torch.no_grad():
            for name, layer in bn_layers(model):
                if name in stats:
                    mean, var = stats[name]
                    layer.running_mean.copy_(mean)
                    layer.running_var.copy_(var)
        return model
