"""How far the distributions of a network's layer inputs move between two moments of training.

Ioffe & Szegedy (2015, Section 2) define internal covariate shift as the change in the
distribution of a layer's inputs caused by the updates of the layers before it; Santurkar
et al. (2018, Fig. 2) show it as per-unit activation histograms drifting over training. Here a
layer input is summarised per channel c by its mean m_c and standard deviation s_c over a fixed
probe batch (all samples and positions), and the shift from moment a to moment b is

    shift(a, b) = mean over layers of  (mean_c |m_c(b) − m_c(a)| + mean_c |s_c(b) − s_c(a)|) / S(a),

with S(a) = mean_c s_c(a), the layer's typical spread: scale-free (a network whose activations
are 10× larger does not shift 10× more), zero when nothing moved, and not blown up by channels
that are (nearly) constant on the probe (a dead ReLU unit, an image border). :func:`layer_input_stats` runs the probe on a copy of the model, in the model's
mode, so a training-mode probe neither updates running statistics nor touches the model.
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["distribution_shift", "layer_input_stats"]

Stats = Mapping[str, tuple[Tensor, Tensor]]


@torch.no_grad()
def layer_input_stats(model: nn.Module, x: Tensor, layers: Sequence[str]) -> dict[str, tuple[Tensor, Tensor]]:
    """Module path → (per-channel mean, per-channel std) of that module's input on ``x``, float64."""
    net = copy.deepcopy(model)
    modules = dict(net.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise KeyError(f"unknown module(s) {missing}")
    out: dict[str, tuple[Tensor, Tensor]] = {}

    def hook(name):
        def record(module, inputs, output):
            a = inputs[0].detach().double()
            a = a.transpose(0, 1).reshape(a.shape[1], -1)          # (C, N·∏spatial)
            out[name] = (a.mean(1), a.std(1, correction=0))
        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in layers]
    try:
        net(x)
    finally:
        for h in handles:
            h.remove()
    return out


def distribution_shift(a: Stats, b: Stats, eps: float = 1e-8) -> float:
    """The shift from ``a`` to ``b`` (same layers), see the module docstring."""
    terms = []
    for name, (m_a, s_a) in a.items():
        m_b, s_b = b[name]
        spread = s_a.mean().clamp_min(eps)                                   # S(a)
        terms.append(((m_b - m_a).abs().mean() + (s_b - s_a).abs().mean()) / spread)
    return float(torch.stack(terms).mean()) if terms else float("nan")
