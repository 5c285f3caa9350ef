"""Activation memory autograd keeps for backward, measured with ``saved_tensors_hooks``.

Counted: distinct storages of at least one activation's size that are packed for
backward during one training forward. Two settings: the layer alone, and the chain
``conv → norm+act → conv`` (the chain's own input excluded), where the second conv
keeps the activation's output anyway — only In-Place ABN, whose output *is* its input,
then keeps less than torch's BN → activation.
"""
from __future__ import annotations

import torch
from torch import nn

from .fused import BNLAB_ACT, SLOPE, torch_bn_act

__all__ = ["saved_activation_bytes", "bench_memory"]


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, exclude: torch.Tensor | None = None) -> int:
    """Bytes of distinct activation-sized storages saved for backward by ``model(x)``."""
    seen: dict[int, int] = {}
    skip = None if exclude is None else exclude.untyped_storage().data_ptr()

    def pack(t):
        if t.numel() >= x.numel() and t.untyped_storage().data_ptr() != skip:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


def _variants(c: int) -> dict[str, nn.Module]:
    return {
        "torch_bn_relu": torch_bn_act(4, c, "relu"),
        "torch_bn_leaky": torch_bn_act(4, c, "leaky_relu"),
        "bnlab_act": BNLAB_ACT[4](c, act="relu"),
        "bnlab_inplace": BNLAB_ACT[4](c, act="leaky_relu", negative_slope=SLOPE, inplace=True),
    }


def bench_memory(shape=(8, 16, 32, 32)) -> dict:
    """Saved bytes per variant, alone and in a conv chain, on one NCHW ``shape``."""
    torch.manual_seed(0)
    c = shape[1]
    x = torch.randn(shape)
    out = {"shape": list(shape), "activation_bytes": x.numel() * x.element_size(), "alone": {}, "chain": {}}
    for name, layer in _variants(c).items():
        leaf = x.clone().requires_grad_()
        h = leaf * 1.0                                               # a non-leaf input, as in a network
        out["alone"][name] = saved_activation_bytes(layer, h)
        chain = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), layer, nn.Conv2d(c, c, 1, bias=False))
        out["chain"][name] = saved_activation_bytes(chain, leaf, exclude=leaf)
    base = out["chain"]["torch_bn_leaky"]
    out["inplace_vs_torch_chain"] = out["chain"]["bnlab_inplace"] / base if base else None
    base = out["alone"]["torch_bn_leaky"]
    out["inplace_vs_torch_alone"] = out["alone"]["bnlab_inplace"] / base if base else None
    out["fused_vs_torch_alone"] = (out["alone"]["bnlab_act"] / out["alone"]["torch_bn_relu"]
                                   if out["alone"]["torch_bn_relu"] else None)
    return out
