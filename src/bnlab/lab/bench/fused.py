"""Fused BN + activation (``bnlab.BatchNormAct*d``) against torch's BN followed by the activation.

Two pairs per shape: ``BatchNormAct(act="relu")`` vs ``nn.BatchNorm*d → nn.ReLU(inplace=True)``
(the faster torch idiom: the ReLU reuses BN's output) and the In-Place ABN variant
``BatchNormAct(act="leaky_relu", inplace=True)`` vs ``nn.BatchNorm*d → nn.LeakyReLU(inplace=True)``,
both given a fresh copy of the input each call (made untimed).
"""
from __future__ import annotations

from torch import nn

from ...nn.act import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d
from .config import parse_shapes
from .layers import TORCH_BN, bench_pair

__all__ = ["bench_fused", "BNLAB_ACT", "torch_bn_act"]

BNLAB_ACT = {2: BatchNormAct1d, 3: BatchNormAct1d, 4: BatchNormAct2d, 5: BatchNormAct3d}
SLOPE = 0.01


def torch_bn_act(nd: int, c: int, act: str) -> nn.Sequential:
    """torch's BN followed by the activation, the activation in place on BN's output."""
    a = nn.ReLU(inplace=True) if act == "relu" else nn.LeakyReLU(SLOPE, inplace=True)
    return nn.Sequential(TORCH_BN[nd](c), a)


def bench_fused(cfg) -> list[dict]:
    """Per shape: ``relu`` (fused vs torch pair) and ``leaky_relu_inplace`` rows."""
    rows = []
    for shape, cl in parse_shapes(cfg.shapes):
        c, nd = shape[1], len(shape)
        relu = {"bnlab_act": BNLAB_ACT[nd](c, act="relu"), "torch_bn_relu": torch_bn_act(nd, c, "relu")}
        row = bench_pair(relu, shape, cl, cfg.reps, cfg.warmup)
        inplace = {"bnlab_inplace": BNLAB_ACT[nd](c, act="leaky_relu", negative_slope=SLOPE, inplace=True),
                   "torch_bn_leaky": torch_bn_act(nd, c, "leaky_relu")}
        row["inplace"] = bench_pair(inplace, shape, cl, cfg.reps, cfg.warmup, fresh_input=True)
        rows.append(row)
    return rows
