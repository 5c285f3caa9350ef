"""Swap every Batch Normalization layer of a model between bnlab and PyTorch."""
from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from ..nn import batchnorm as bn
from ..nn.sync import SyncBatchNorm

__all__ = ["convert_model", "ConvertReport"]

_log = logging.getLogger("bnlab")

# exact classes: a subclass carries other semantics and is handled (or named) on its own
_TORCH_TO_BNLAB = {
    nn.BatchNorm1d: bn.BatchNorm1d,
    nn.BatchNorm2d: bn.BatchNorm2d,
    nn.BatchNorm3d: bn.BatchNorm3d,
    nn.SyncBatchNorm: SyncBatchNorm,
}
_BNLAB_TO_TORCH = {v: k for k, v in _TORCH_TO_BNLAB.items()}


@dataclass
class ConvertReport:
    """What :func:`convert_model` did.

    ``converted``: ``(name, old class, new class)`` per replaced layer (qualified module
    names; ``""`` is the root). ``skipped``: ``(name, reason)`` for every BatchNorm layer
    left as it was.
    """

    converted: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    fused: int = 0

    def __str__(self) -> str:
        lines = [f"converted {len(self.converted)} BatchNorm layer(s), left {len(self.skipped)}"
                 + (f", fused {self.fused} BatchNorm → activation pair(s)" if self.fused else "")]
        lines += [f"  {name or '<root>'}: {old} -> {new}" for name, old, new in self.converted]
        lines += [f"  kept {name or '<root>'}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


def _factory(layer: nn.Module) -> dict:
    ref = layer.weight if layer.weight is not None else layer.running_mean
    return {} if ref is None else {"device": ref.device, "dtype": ref.dtype}


def _carry_state(layer: nn.Module, new: nn.Module) -> nn.Module:
    """Copy parameters (with ``requires_grad``), buffers and mode from ``layer`` into ``new``."""
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
    if hasattr(layer, "qconfig"):
        new.qconfig = layer.qconfig
    return new


def _swap(layer: nn.Module, cls: type) -> nn.Module:
    """A new ``cls`` layer with ``layer``'s hyper-parameters, parameters, buffers and mode."""
    kwargs = dict(eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
                  track_running_stats=layer.track_running_stats, bias=layer.bias is not None, **_factory(layer))
    if issubclass(cls, (nn.SyncBatchNorm, SyncBatchNorm)):
        kwargs["process_group"] = getattr(layer, "process_group", None)
    return _carry_state(layer, cls(layer.num_features, **kwargs))


def _norm_act_target(layer: nn.Module):
    """For a torch-BN subclass in timm's ``BatchNormAct2d`` layout, the bnlab class and activation.

    The layout: a subclass of ``torch.nn.BatchNorm*d`` with an ``act`` module applied after
    the normalization and a ``drop`` that is ``nn.Identity``. Returns ``(cls, act)`` or a
    string saying why the layer cannot be converted faithfully.
    """
    act, drop = getattr(layer, "act", None), getattr(layer, "drop", None)
    if not isinstance(act, nn.Module):
        return "a subclass whose additions are unknown to bnlab"
    if drop is not None and not isinstance(drop, nn.Identity):
        return f"its drop layer {type(drop).__name__} has no bnlab equivalent"
    try:
        from ..nn import act as act_mod
    except ImportError:                                              # pragma: no cover - partial install
        return "bnlab's BatchNormAct layers are unavailable"
    if act_mod.act_spec(act) is None:
        return f"its activation {type(act).__name__} is not one bnlab fuses (ReLU, LeakyReLU, SiLU, Identity)"
    for dim, base in ((1, nn.BatchNorm1d), (2, nn.BatchNorm2d), (3, nn.BatchNorm3d)):
        if isinstance(layer, base):
            return getattr(act_mod, f"BatchNormAct{dim}d"), act
    return "not a BatchNorm1d/2d/3d subclass"


def _swap_norm_act(layer: nn.Module, cls: type, act: nn.Module) -> nn.Module:
    new = cls(layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
              track_running_stats=layer.track_running_stats, bias=layer.bias is not None,
              act=copy.deepcopy(act), **_factory(layer))
    return _carry_state(layer, new)


def _convert_one(layer: nn.Module, to: str):
    """The replacement of ``layer``, or a reason (str) to keep it, or ``None`` (not a BN layer)."""
    table = _TORCH_TO_BNLAB if to == "bnlab" else _BNLAB_TO_TORCH
    if type(layer) in table:
        if getattr(layer, "num_features", 0) == 0:
            return "an uninitialized lazy layer (run one forward first)"
        return _swap(layer, table[type(layer)])
    is_ours = isinstance(layer, (bn._BatchNorm,)) or type(layer).__module__.startswith("bnlab.")
    if to == "bnlab":
        if is_ours or not isinstance(layer, nn.modules.batchnorm._BatchNorm):
            return None
        if isinstance(layer, nn.modules.lazy.LazyModuleMixin):
            return "an uninitialized lazy layer (run one forward first)"
        target = _norm_act_target(layer)
        if isinstance(target, str):
            return target
        return _swap_norm_act(layer, *target)
    if is_ours and (isinstance(layer, bn._BatchNorm) or hasattr(layer, "running_mean")):
        return f"a bnlab variant ({type(layer).__name__}) with no PyTorch equivalent"
    return None


def _walk(module: nn.Module, to: str, prefix: str, report: ConvertReport) -> nn.Module:
    new = _convert_one(module, to)
    if isinstance(new, nn.Module):
        report.converted.append((prefix, type(module).__name__, f"{type(new).__module__.split('.')[0]}."
                                 f"{type(new).__name__}"))
        return new
    if isinstance(new, str):
        report.skipped.append((prefix, f"{type(module).__name__}: {new}"))
    for name, child in module.named_children():
        out = _walk(child, to, f"{prefix}.{name}" if prefix else name, report)
        if out is not child:
            setattr(module, name, out)
    return module


def convert_model(module: nn.Module, to: str = "bnlab", *, inplace: bool = False, fuse_act: bool = False,
                  return_report: bool = False):
    """Replace every BatchNorm layer of ``module`` by its bnlab (or PyTorch) twin.

    ``to="bnlab"`` converts ``torch.nn.BatchNorm1d/2d/3d`` and ``torch.nn.SyncBatchNorm``
    to bnlab's layers, and subclasses of torch's BN in timm's ``BatchNormAct2d`` layout
    (an ``act`` module after the normalization, ``drop`` an ``nn.Identity``) to
    :class:`bnlab.BatchNormAct2d` with the same activation. ``to="torch"`` converts
    bnlab's ``BatchNorm1d/2d/3d`` and ``SyncBatchNorm`` back (e.g. before eager-mode
    quantization's ``fuse_modules``, whose table is keyed on torch's exact classes).
    Parameters (``requires_grad`` too), buffers, hyper-parameters, training mode,
    ``qconfig``, device and dtype carry over, so outputs and gradients are unchanged and
    a round trip is exact.

    A BatchNorm layer that cannot be converted faithfully — a subclass with other
    additions, a bnlab variant (Ghost BN, Batch Renorm, frozen BN) asked to become
    torch's, an uninitialized lazy layer — is left as it is and named in a
    ``UserWarning`` (or in the report). The number converted is logged on the
    ``"bnlab"`` logger (INFO).

    Copy semantics as :func:`bnlab.fold_batchnorm`: by default the model is deep-copied
    and the copy converted (``module`` itself is unchanged); ``inplace=True`` replaces
    the layers inside ``module`` and returns it (or the new layer, for a bare BN layer).

    Args:
        module: any ``nn.Module``.
        to: ``"bnlab"`` (torch → bnlab) or ``"torch"`` (bnlab → torch).
        inplace: convert ``module`` itself rather than a copy. Default: ``False``.
        fuse_act: with ``to="bnlab"``, also fuse every BatchNorm → ReLU/LeakyReLU/SiLU pair
            of an ``nn.Sequential`` into one :class:`bnlab.BatchNormAct2d` (etc.; the
            activation's slot becomes ``nn.Identity``, state_dict keys unchanged), see
            :func:`bnlab.surgery.fuse_act.fuse_bn_act`. Default: ``False``.
        return_report: return ``(model, ConvertReport)`` instead of the model.

    Example::

        >>> model = bnlab.convert_model(torchvision_resnet)            # a converted copy
        >>> model, report = bnlab.convert_model(model, to="torch", return_report=True)
        >>> len(report.converted)
        20
    """
    if to not in ("bnlab", "torch"):
        raise ValueError(f"convert_model: to must be 'bnlab' or 'torch', got {to!r}")
    if not isinstance(module, nn.Module):
        raise TypeError(f"convert_model: expected an nn.Module, got {type(module).__name__}")
    if not inplace:
        module = copy.deepcopy(module)
    if fuse_act and to != "bnlab":
        raise ValueError("convert_model: fuse_act=True needs to='bnlab' (the fused layers are bnlab's)")
    report = ConvertReport()
    out = _walk(module, to, "", report)
    if fuse_act:
        from .fuse_act import fuse_bn_act

        out, report.fused = fuse_bn_act(out, inplace=True, return_count=True)
    _log.info("convert_model(to=%r): converted %d BatchNorm layer(s), left %d",
              to, len(report.converted), len(report.skipped))
    if return_report:
        return out, report
    if report.skipped:
        names = ", ".join(f"{name or '<root>'} ({why})" for name, why in report.skipped)
        warnings.warn(f"convert_model: left {len(report.skipped)} BatchNorm layer(s) unconverted: {names}",
                      UserWarning, stacklevel=2)
    return out
