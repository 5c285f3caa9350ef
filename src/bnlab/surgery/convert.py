"""Swap every Batch Normalization layer of a model between bnlab and PyTorch."""
from __future__ import annotations

import torch
from torch import nn

from ..nn import batchnorm as bn

__all__ = ["convert_model"]

# exact classes only: subclasses (SyncBatchNorm, user variants) carry other semantics
_TORCH_TO_BNLAB = {
    nn.BatchNorm1d: bn.BatchNorm1d,
    nn.BatchNorm2d: bn.BatchNorm2d,
    nn.BatchNorm3d: bn.BatchNorm3d,
}
_BNLAB_TO_TORCH = {v: k for k, v in _TORCH_TO_BNLAB.items()}


def _swap(layer: nn.Module, cls: type) -> nn.Module:
    """A new ``cls`` layer with ``layer``'s hyper-parameters, parameters, buffers and mode."""
    ref = layer.weight if layer.weight is not None else layer.running_mean
    factory = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    new = cls(
        layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
        track_running_stats=layer.track_running_stats, bias=layer.bias is not None, **factory,
    )
    with torch.no_grad():
        for name in ("weight", "bias"):
            old_p, new_p = getattr(layer, name), getattr(new, name)
            if old_p is not None:
                new_p.copy_(old_p)
                new_p.requires_grad_(old_p.requires_grad)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            old_b = getattr(layer, name)
            if old_b is not None:
                setattr(new, name, old_b.detach().clone())
    new.train(layer.training)
    return new


def convert_model(module: nn.Module, to: str = "bnlab") -> nn.Module:
    """Replace every BatchNorm1d/2d/3d in ``module`` by its bnlab (or torch) twin.

    Parameters, buffers (``running_mean``, ``running_var``, ``num_batches_tracked``),
    hyper-parameters, training mode, ``requires_grad``, device and dtype carry over,
    so outputs and gradients are unchanged and a round trip is exact. Layers are
    replaced in place in their parents; the (possibly new) root is returned, so a
    bare BatchNorm layer works too::

        model = bnlab.convert_model(torchvision_resnet, to="bnlab")

    Args:
        module: any ``nn.Module``.
        to: ``"bnlab"`` (torch → bnlab) or ``"torch"`` (bnlab → torch).
    """
    if to not in ("bnlab", "torch"):
        raise ValueError(f"convert_model: to must be 'bnlab' or 'torch', got {to!r}")
    if not isinstance(module, nn.Module):
        raise TypeError(f"convert_model: expected an nn.Module, got {type(module).__name__}")
    table = _TORCH_TO_BNLAB if to == "bnlab" else _BNLAB_TO_TORCH
    if type(module) in table:
        return _swap(module, table[type(module)])
    for name, child in module.named_children():
        new = convert_model(child, to)
        if new is not child:
            setattr(module, name, new)
    return module
