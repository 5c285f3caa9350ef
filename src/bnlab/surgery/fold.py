"""Fold eval-mode Batch Normalization into the preceding Conv / ConvTranspose / Linear layer.

In eval mode BN is a per-channel affine map of its input z (Alg. 2):

    BN(z) = s·z + t,   s = γ / sqrt(Var[x] + ε),   t = β − s·E[x]

so after a layer z = W∗x + b it folds into that layer: W' = s·W (scaling each
*output* channel) and b' = s·b + t. The folded model computes the same function as
the unfolded one in eval mode, with one layer less.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from ..nn.batchnorm import _BatchNorm
from ..nn.frozen import _FrozenBatchNorm

__all__ = ["fold_batchnorm", "FoldReport"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_PRODUCERS = _CONV + _CONV_T + (nn.Linear,)


@dataclass
class FoldReport:
    """What :func:`fold_batchnorm` did.

    ``folded``: ``(layer, bn)`` pairs of qualified module names (the names in the
    model passed in), BN folded into ``layer``. ``skipped``: ``(bn, reason)`` for every
    BN layer left in place.
    """

    folded: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"folded {len(self.folded)} BatchNorm layer(s), left {len(self.skipped)} in place"]
        lines += [f"  folded {bn} into {layer}" for layer, bn in self.folded]
        lines += [f"  kept {bn}: {why}" for bn, why in self.skipped]
        return "\n".join(lines)


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, (nn.modules.batchnorm._BatchNorm, _BatchNorm, _FrozenBatchNorm))


def _unfoldable_reason(bn: nn.Module) -> str | None:
    """Why ``bn`` is not an affine map now (``None`` when it is)."""
    if isinstance(bn, _FrozenBatchNorm):
        return None
    if bn.running_mean is None or bn.running_var is None:
        return "no running statistics (track_running_stats=False): it always normalizes with batch statistics"
    uses_batch = bn._uses_batch_stats() if isinstance(bn, _BatchNorm) else bn.training
    if uses_batch:
        return "normalizes with batch statistics (training mode or use_batch_stats=True); call model.eval() first"
    return None


@torch.no_grad()
def _scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Alg. 2 as an affine map: ``s = γ/sqrt(Var + ε)``, ``t = β − s·E[x]``, float64 ``(C,)``."""
    f64 = torch.float64
    s = torch.rsqrt(bn.running_var.to(f64) + bn.eps)
    if bn.weight is not None:
        s = s * bn.weight.to(f64)
    t = -s * bn.running_mean.to(f64)
    if bn.bias is not None:
        t = t + bn.bias.to(f64)
    return s, t


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


@torch.no_grad()
def _folded(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``layer`` whose output is ``bn(layer(x))`` (``bn`` in eval mode)."""
    s, t = _scale_shift(bn)                                          # (C_out,), (C_out,)
    new = copy.deepcopy(layer)
    w = layer.weight.to(torch.float64)
    if isinstance(layer, _CONV_T):
        # weight (C_in, C_out/g, *k): output channel of [g·C_in/g + i, j] is g·C_out/g + j
        g = layer.groups
        c_in, c_out_g = w.shape[0], w.shape[1]
        k = w.shape[2:]
        w = w.reshape(g, c_in // g, c_out_g, *k) * s.reshape(g, 1, c_out_g, *([1] * len(k)))
        w = w.reshape(c_in, c_out_g, *k)
    else:
        # Conv weight (C_out, C_in/g, *k), Linear weight (C_out, C_in): scale the rows
        w = w * s.reshape(-1, *([1] * (w.dim() - 1)))
    b = t if layer.bias is None else layer.bias.to(torch.float64) * s + t
    new.weight = nn.Parameter(w.to(layer.weight.dtype), requires_grad=layer.weight.requires_grad)
    new.bias = nn.Parameter(b.to(layer.weight.dtype), requires_grad=layer.weight.requires_grad)
    return new


def _pair_reason(layer: nn.Module, bn: nn.Module) -> str | None:
    if not isinstance(layer, _PRODUCERS):
        return f"preceded by {type(layer).__name__}, not a Conv/ConvTranspose/Linear layer"
    if _out_channels(layer) != bn.num_features:
        return f"{type(layer).__name__} has {_out_channels(layer)} output channels but the BN has {bn.num_features}"
    return None


def _fold_sequentials(model: nn.Module, report: FoldReport, done: set) -> None:
    """Fold every (producer, BN) pair of adjacent children in every ``nn.Sequential``."""
    for prefix, seq in list(model.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        keys = list(seq._modules)
        for a, b in zip(keys[:-1], keys[1:]):
            layer, bn = seq._modules[a], seq._modules[b]
            if not _is_bn(bn) or _unfoldable_reason(bn) or _pair_reason(layer, bn):
                continue
            seq._modules[a] = _folded(layer, bn)
            seq._modules[b] = nn.Identity()       # keeps the indices and names of the other children
            name = f"{prefix}.{b}" if prefix else b
            report.folded.append((f"{prefix}.{a}" if prefix else a, name))
            done.add(name)


class _LeafTracer(fx.Tracer):
    """Keeps BN, producers and every bnlab module as single graph nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if _is_bn(m) or isinstance(m, _PRODUCERS) or type(m).__module__.startswith("bnlab."):
            return True
        return super().is_leaf_module(m, qualname)


def _set_submodule(root: nn.Module, target: str, new: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def _fold_graph(model: nn.Module, pending: dict, report: FoldReport) -> nn.Module | None:
    """Fold the ``pending`` BN layers found in a torch.fx trace; ``None`` if nothing folded."""
    tracer = _LeafTracer()
    try:
        graph = tracer.trace(model)
    except Exception as err:  # noqa: BLE001 - any tracing failure means "not traceable"
        for name in pending:
            pending[name] = f"not in an nn.Sequential after a foldable layer, and torch.fx cannot trace the model ({type(err).__name__})"
        return None
    gm = fx.GraphModule(tracer.root, graph)
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    n_folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or node.target not in pending:
            continue
        bn = modules[node.target]
        prev = node.args[0] if node.args else None
        if len(node.args) != 1 or node.kwargs or not isinstance(prev, fx.Node) or prev.op != "call_module":
            pending[node.target] = "its input is not the output of a module in the traced graph"
            continue
        layer = modules[prev.target]
        reason = _pair_reason(layer, bn)
        if reason is None and (len(prev.users) != 1 or calls[prev.target] != 1):
            reason = f"the output or the weights of {prev.target} are also used elsewhere"
        if reason is None and calls[node.target] != 1:
            reason = "the BN layer is called more than once"
        if reason is not None:
            pending[node.target] = reason
            continue
        _set_submodule(gm, prev.target, _folded(layer, bn))
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        gm.delete_submodule(node.target)
        report.folded.append((prev.target, node.target))
        del pending[node.target]
        n_folded += 1
    if n_folded == 0:
        return None
    gm.graph.lint()
    gm.recompile()
    gm.train(model.training)
    return gm


def fold_batchnorm(model: nn.Module, *, inplace: bool = False, return_report: bool = False):
    """Fold every eval-mode BatchNorm layer into the Conv/ConvTranspose/Linear before it.

    With BN's inference transform written as ``s·z + t`` (``s = γ/sqrt(Var[x] + ε)``,
    ``t = β − s·E[x]``, Alg. 2), the layer ``z = W∗x + b`` becomes ``W' = s·W`` (per
    output channel; for grouped ConvTranspose the output channels are the weight's
    dim 1 within each group) and ``b' = s·b + t`` (a bias is created for ``bias=False``
    layers); the arithmetic is float64, stored in the layer's dtype. Works for
    ``torch.nn.BatchNorm*d`` / ``SyncBatchNorm`` and every bnlab BN layer in eval
    mode (``FrozenBatchNorm`` always), ``affine=False`` included; Linear is assumed
    to produce ``(N, C)`` (channels at dim 1, as BatchNorm1d expects).

    Where: (1) adjacent children of every ``nn.Sequential`` (the BN becomes
    ``nn.Identity()`` so indices and state_dict keys of the rest stay put); then,
    (2) if BN layers remain, a ``torch.fx`` trace of the model: a BN whose input is a
    foldable layer used nowhere else is folded and the result is an
    ``fx.GraphModule`` (returned only when that folds something).

    BN layers that cannot be folded — after a ReLU, in training mode, without
    running statistics, in code torch.fx cannot trace — are left in place and
    reported: ``return_report=True`` returns ``(model, FoldReport)``; otherwise a
    ``UserWarning`` lists them. The folded model is for inference: it equals the
    original in eval mode (to float32 rounding), not in training mode.

    Args:
        model: an ``nn.Module`` (call ``model.eval()`` first).
        inplace: modify ``model`` itself instead of a deep copy. Default: ``False``.
        return_report: also return a :class:`FoldReport`. Default: ``False``.

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), bnlab.BatchNorm2d(8), nn.ReLU()).eval()
        >>> fused, report = bnlab.fold_batchnorm(net, return_report=True)
        >>> report.folded
        [('0', '1')]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_batchnorm: expected an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    report = FoldReport()
    done: set[str] = set()
    _fold_sequentials(model, report, done)
    kept: dict[str, str] = {}                                        # BN name -> reason, in module order
    pending: dict[str, str] = {}                                     # foldable in principle: try torch.fx
    for name, m in model.named_modules():
        if _is_bn(m) and name not in done:
            why = _unfoldable_reason(m)
            kept[name] = why or "not preceded by a foldable Conv/ConvTranspose/Linear layer"
            if why is None:
                pending[name] = kept[name]
    root_name = type(model).__name__
    if pending and not _is_bn(model):
        graph_model = _fold_graph(model, pending, report)
        if graph_model is not None:
            model = graph_model
    folded = {bn for _, bn in report.folded}
    report.skipped = [(name or root_name, pending.get(name, why)) for name, why in kept.items() if name not in folded]
    if return_report:
        return model, report
    if report.skipped:
        warnings.warn(f"fold_batchnorm: {report}", UserWarning, stacklevel=2)
    return model
