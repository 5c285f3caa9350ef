"""Fuse Batch Normalization → activation pairs of ``nn.Sequential`` into ``BatchNormAct``."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..nn import act as act_mod
from ..nn import batchnorm as bn

__all__ = ["fuse_bn_act"]

# exact classes only: variants (Ghost, Renorm, Sync, Frozen, user subclasses) normalize differently
_FUSED = {
    nn.BatchNorm1d: act_mod.BatchNormAct1d, bn.BatchNorm1d: act_mod.BatchNormAct1d,
    nn.BatchNorm2d: act_mod.BatchNormAct2d, bn.BatchNorm2d: act_mod.BatchNormAct2d,
    nn.BatchNorm3d: act_mod.BatchNormAct3d, bn.BatchNorm3d: act_mod.BatchNormAct3d,
}
_ACTS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU}
# layers whose output nothing else reads in a Sequential (they save their input, not their output):
# only after one of these may a fused layer overwrite its input
_SAFE_PRODUCERS = (nn.modules.conv._ConvNd, nn.Linear)


def _fused_layer(layer: nn.Module, act: nn.Module, inplace: bool) -> nn.Module:
    """A ``BatchNormAct*d`` with ``layer``'s hyper-parameters, state, mode and ``act``."""
    ref = layer.weight if layer.weight is not None else layer.running_mean
    factory = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    spec = act_mod.act_spec(act)
    new = _FUSED[type(layer)](
        layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
        track_running_stats=layer.track_running_stats, bias=layer.bias is not None,
        act=spec[0], negative_slope=spec[1] if spec[0] == "leaky_relu" else 0.01, inplace=inplace, **factory,
    )
    new.load_state_dict(layer.state_dict())
    with torch.no_grad():
        for name in ("weight", "bias"):
            p = getattr(layer, name)
            if p is not None:
                getattr(new, name).requires_grad_(p.requires_grad)
    new.train(layer.training)
    return new


def fuse_bn_act(module: nn.Module, acts=("relu", "leaky_relu", "silu"), *, inplace: bool = False,
                inplace_abn: bool = False, return_count: bool = False):
    """Fuse every BatchNorm → activation pair inside an ``nn.Sequential`` of ``module``.

    A child BatchNorm1d/2d/3d (torch's or bnlab's, exact classes) directly followed
    by an ``nn.ReLU``/``nn.LeakyReLU``/``nn.SiLU`` sibling becomes a
    :class:`bnlab.BatchNormAct2d` (etc.) with the same parameters, buffers, mode and
    activation; the activation's slot becomes ``nn.Identity`` so indices, and the
    state_dict keys of every other layer, stay as they were: the model's state_dict
    is unchanged, and so are its outputs and gradients.

    Copy semantics as :func:`bnlab.convert_model`: by default a deep copy is fused and
    returned (``module`` itself is unchanged); ``inplace=True`` fuses ``module`` itself.

    Args:
        module: any ``nn.Module``; Sequentials anywhere inside it are searched.
        acts: the activations to fuse, among ``"relu"``, ``"leaky_relu"``, ``"silu"``.
        inplace: fuse ``module`` itself rather than a copy. Default: ``False``.
        inplace_abn: make fused layers In-Place ABN (output over input) where that is
            safe: the activation is invertible (leaky ReLU with slope > 0) and the BN
            input is the output of a conv/linear sibling, which nothing else reads.
            Other pairs are fused without it. Default: ``False``.
        return_count: return ``(model, number of pairs fused)`` instead of the model.

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        >>> fused = bnlab.fuse_bn_act(net)           # fused[1] is a bnlab.BatchNormAct2d
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"fuse_bn_act: expected an nn.Module, got {type(module).__name__}")
    bad = [a for a in acts if a not in _ACTS]
    if bad:
        raise ValueError(f"fuse_bn_act: cannot fuse {bad}; acts must be among {tuple(_ACTS)}")
    if not inplace:
        module = copy.deepcopy(module)
    wanted = tuple(_ACTS[a] for a in acts)
    count = 0
    for parent in list(module.modules()):
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for i in range(len(names) - 1):
            layer, act = parent._modules[names[i]], parent._modules[names[i + 1]]
            if type(layer) not in _FUSED or type(act) not in wanted:
                continue
            spec = act_mod.act_spec(act)
            safe = i > 0 and isinstance(parent._modules[names[i - 1]], _SAFE_PRODUCERS)
            invertible = spec[0] in act_mod.INVERTIBLE and spec[1] > 0
            parent._modules[names[i]] = _fused_layer(layer, act, inplace_abn and safe and invertible)
            parent._modules[names[i + 1]] = nn.Identity()
            count += 1
    return (module, count) if return_count else module
