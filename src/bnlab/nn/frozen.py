"""Frozen Batch Normalization: fixed statistics and affine parameters.

``FrozenBatchNorm1d/2d/3d`` always apply Algorithm 2's inference transform, in
training mode too; γ, β and the statistics are buffers, so no optimizer updates
them. ``freeze_batchnorm(model)`` swaps every BatchNorm layer of a model for one.
To freeze only the statistics of a bnlab layer and keep γ, β trainable, use its
policy attributes instead: ``layer.use_batch_stats = False`` (normalize with the
running statistics) and ``layer.update_running_stats = False``.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from .. import functional as F
from . import batchnorm as _bn
from .batchnorm import _BatchNorm, _Input1d, _Input2d, _Input3d

__all__ = ["FrozenBatchNorm1d", "FrozenBatchNorm2d", "FrozenBatchNorm3d", "freeze_batchnorm",
           "graph_frozen_batch_norm"]


def graph_frozen_batch_norm(input: Tensor, weight, bias, running_mean, running_var, num_batches_tracked,
                            ranks: tuple, eps: float) -> Tensor:
    """A frozen layer's forward as a function of its tensors: the checks, then Alg. 2 (any mode).

    What ``torch.fx.symbolic_trace`` of a bare layer records (see ``batchnorm._fx_root_forward``).
    ``num_batches_tracked`` is unused; passing it keeps it in the GraphModule's state_dict.
    """
    _bn._dim_error(input, ranks)
    F.check_input(input, running_mean, running_var, weight, bias, training=False, eps=eps)
    return F.batch_norm_eval(input, running_mean, running_var, weight, bias, eps)


class _FrozenBatchNorm(nn.Module):
    """Buffers ``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``."""

    _version = 2

    def __init__(self, num_features: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features <= 0:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be non-negative, got {eps}")
        kw = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        # the keys and order of torch.nn.BatchNorm*d's state_dict: checkpoints move both ways
        self.register_buffer("weight", torch.ones(num_features, **kw))
        self.register_buffer("bias", torch.zeros(num_features, **kw))
        self.register_buffer("running_mean", torch.zeros(num_features, **kw))
        self.register_buffer("running_var", torch.ones(num_features, **kw))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))

    @classmethod
    def from_batchnorm(cls, bn: nn.Module) -> "_FrozenBatchNorm":
        """A frozen copy of a BatchNorm layer's eval-mode transform (torch or bnlab).

        ``affine=False`` (or ``bias=False``) layers give γ = 1 (β = 0). Raises
        ``ValueError`` for a layer without running statistics.
        """
        if getattr(bn, "running_mean", None) is None or getattr(bn, "running_var", None) is None:
            raise ValueError(f"cannot freeze {type(bn).__name__}: it has no running statistics")
        rm = bn.running_mean
        new = cls(bn.num_features, eps=bn.eps, device=rm.device, dtype=rm.dtype)
        with torch.no_grad():
            new.running_mean.copy_(rm)
            new.running_var.copy_(bn.running_var)
            if getattr(bn, "weight", None) is not None:
                new.weight.copy_(bn.weight)
            if getattr(bn, "bias", None) is not None:
                new.bias.copy_(bn.bias)
            if getattr(bn, "num_batches_tracked", None) is not None:
                new.num_batches_tracked.copy_(bn.num_batches_tracked)
        return new

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def _get_name(self) -> str:
        return f"bnlab.{type(self).__name__}"

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return torch.ops.bnlab.bn_eval(input, self.running_mean, self.running_var, self.weight, self.bias,
                                           self.eps, "identity", 0.0)
        if _bn._is_fx_root(self, input):
            return _bn._fx_root_forward(self, input)
        return _bn._forward(self, input)                             # one torch.fx node (see batchnorm)

    def _fx_graph_call(self):
        """``(graph_frozen_batch_norm, args after the input)``: the graph of a bare-layer ``torch.fx`` trace."""
        if type(self)._forward_impl is not _FrozenBatchNorm._forward_impl or not hasattr(self, "_ranks"):
            return None
        return graph_frozen_batch_norm, (self.weight, self.bias, self.running_mean, self.running_var,
                                         self.num_batches_tracked, self._ranks, self.eps)

    def _forward_impl(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        F.check_input(input, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                      eps=self.eps)
        # Alg. 2 regardless of self.training: y = γ·(x − E[x])/sqrt(Var[x] + ε) + β
        return F.batch_norm_eval(input, self.running_mean, self.running_var, self.weight, self.bias, self.eps)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # torchvision's FrozenBatchNorm2d checkpoints have no num_batches_tracked
        key = prefix + "num_batches_tracked"
        if key not in state_dict:
            state_dict[key] = torch.zeros_like(self.num_batches_tracked)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


_DOC = r"""Batch Normalization with frozen statistics and affine parameters, {ndim} input.

    Always the inference transform of Algorithm 2 (Ioffe & Szegedy, 2015), per
    channel over {over}, whatever the module's mode:

    .. math::
        y = \frac{{x - \mathrm{{E}}[x]}}{{\sqrt{{\mathrm{{Var}}[x] + \epsilon}}}} \cdot \gamma + \beta

    ``weight`` (γ), ``bias`` (β), ``running_mean`` (E[x]), ``running_var`` (the
    unbiased Var[x]) and ``num_batches_tracked`` are *buffers*: ``.train()`` does not
    unfreeze them and optimizers do not see them. The state_dict has exactly the
    keys of ``torch.nn.{bn}``, so checkpoints load both ways (torchvision's
    FrozenBatchNorm2d checkpoints, which lack ``num_batches_tracked``, load too).
    Gradients flow to the input only: dx = γ/sqrt(Var[x] + ε)·dy.

    Args:
        num_features: C.
        eps: ε. Default: 1e-5.

    Shape:
        - Input: {shape}
        - Output: the same shape.

    Example::

        >>> frozen = bnlab.{name}.from_batchnorm(trained_bn)       # or:
        >>> frozen = bnlab.{name}(64); frozen.load_state_dict(torch_bn.state_dict())

    Ioffe & Szegedy, ICML 2015 (Alg. 2).
    """


class FrozenBatchNorm1d(_Input1d, _FrozenBatchNorm):
    __doc__ = _DOC.format(ndim="2D or 3D", over="(N, L)", shape="(N, C) or (N, C, L)", name="FrozenBatchNorm1d",
                          bn="BatchNorm1d")


class FrozenBatchNorm2d(_Input2d, _FrozenBatchNorm):
    __doc__ = _DOC.format(ndim="4D", over="(N, H, W)", shape="(N, C, H, W)", name="FrozenBatchNorm2d",
                          bn="BatchNorm2d")


class FrozenBatchNorm3d(_Input3d, _FrozenBatchNorm):
    __doc__ = _DOC.format(ndim="5D", over="(N, D, H, W)", shape="(N, C, D, H, W)", name="FrozenBatchNorm3d",
                          bn="BatchNorm3d")


def _frozen_class(layer: nn.Module):
    """The FrozenBatchNorm class for a BatchNorm layer, or ``None`` if it is not one."""
    if not isinstance(layer, (nn.modules.batchnorm._BatchNorm, _BatchNorm)):
        return None
    names = [c.__name__ for c in type(layer).__mro__]
    for dim, cls in (("1d", FrozenBatchNorm1d), ("2d", FrozenBatchNorm2d), ("3d", FrozenBatchNorm3d)):
        if any(n.endswith(dim) for n in names):
            return cls
    return FrozenBatchNorm2d  # SyncBatchNorm and other dimension-free layers: the common (N, C, H, W) case


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` by a ``FrozenBatchNorm`` copy.

    Covers ``torch.nn.BatchNorm1d/2d/3d``, ``torch.nn.SyncBatchNorm`` and every bnlab
    BatchNorm layer (plain, Ghost, Renorm, Sync). Each frozen layer computes what the
    original computes in eval mode, in training mode too (Batch Renorm included:
    its running σ is stored as ``running_var = σ² − ε``). Layers without running
    statistics cannot be frozen: they are left in place with a warning. Children are
    replaced in place; the (possibly new) root is returned::

        model = bnlab.freeze_batchnorm(model)    # fine-tune with frozen BN

    To freeze the statistics only (γ, β still trained), set the policy attributes of
    bnlab layers: ``use_batch_stats = False`` and ``update_running_stats = False``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"freeze_batchnorm: expected an nn.Module, got {type(module).__name__}")
    cls = _frozen_class(module)
    if cls is not None:
        if module.running_mean is None:
            warnings.warn(
                f"freeze_batchnorm: {type(module).__name__} has no running statistics "
                "(track_running_stats=False) and was left in place",
                UserWarning,
                stacklevel=2,
            )
            return module
        return cls.from_batchnorm(module)
    for name, child in module.named_children():
        new = freeze_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module
