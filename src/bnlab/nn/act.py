"""Batch Normalization fused with its activation: ``g(BN(x))`` in one layer.

The paper normalizes the input of each nonlinearity, ``z = g(BN(Wu))`` (Section 3.2);
``BatchNormAct1d/2d/3d`` compute the normalization and ``g`` together. They are
Batch Normalization layers (subclasses of bnlab's, hence of torch's
``BatchNorm*d``) with the state_dict of one — ``weight``, ``bias``, ``running_mean``,
``running_var``, ``num_batches_tracked`` — and the activation as a parameter-free
child module ``act``, the layout of timm's ``BatchNormAct2d``, so checkpoints of a
separate BN→ReLU pair, of timm and of these layers load into one another.

What the fusion buys, in memory: torch's BN followed by an activation keeps two
activation-sized tensors for backward (BN's input, the activation's output);
``BatchNormAct`` keeps only the input and recomputes the pre-activation in backward.
``inplace=True`` goes further, in the manner of In-Place ABN (Rota Bulò et al., 2018):
the output overwrites the input, and backward recovers x̂ from the output by inverting
the activation, x̂ = (g⁻¹(y) − β)/γ — only for invertible ``g`` (identity, leaky ReLU).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import functional as F
from .. import kernels
from ..kernels import ACTIVATIONS, INVERTIBLE
from .batchnorm import (_DIRECT_IMPLS, BatchNorm1d, BatchNorm2d, BatchNorm3d, _dim_error, _layer_tensors, fx_leaf,
                        graph_batch_norm)

__all__ = ["BatchNormAct1d", "BatchNormAct2d", "BatchNormAct3d", "act_spec"]
_MODULES = {"identity": nn.Identity, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU}


# ----------------------------------------------------------------------------- activations
def act_spec(act: nn.Module) -> tuple[str, float] | None:
    """``(name, parameter)`` of an activation module the kernels fuse, else ``None``."""
    t = type(act)
    if t is nn.ReLU:
        return "relu", 0.0
    if t is nn.LeakyReLU:
        return "leaky_relu", float(act.negative_slope)
    if t is nn.SiLU:
        return "silu", 0.0
    if t is nn.Identity:
        return "identity", 0.0
    return None


# ----------------------------------------------------------------------------- modules
def _resolve_act(act, negative_slope: float) -> nn.Module:
    if isinstance(act, str):
        if act not in ACTIVATIONS:
            raise ValueError(f"BatchNormAct: unknown act {act!r}; choose one of {ACTIVATIONS}")
        return nn.LeakyReLU(negative_slope) if act == "leaky_relu" else _MODULES[act]()
    if isinstance(act, type) and issubclass(act, nn.Module):
        act = act()
    if isinstance(act, nn.Module) and act_spec(act) is not None:
        return act
    raise ValueError(f"BatchNormAct: act must be one of {ACTIVATIONS} or nn.ReLU/LeakyReLU/SiLU/Identity, "
                     f"got {act!r}")


def _check_invertible(layer, spec) -> None:
    if spec is None or spec[0] not in INVERTIBLE or (spec[0] == "leaky_relu" and not spec[1] > 0):
        name = type(layer).__name__
        raise ValueError(
            f"{name}(inplace=True) needs an invertible activation (identity, or leaky_relu with "
            f"negative_slope > 0) to recover x̂ from the output in backward; got {layer.act!r}. "
            "Use inplace=False for relu/silu (which still saves only the input)"
        )


def _check_inplace_input(name: str, input: Tensor, weight) -> None:
    """In-Place ABN's run-time conditions: an input that is not a leaf requiring grad, γ ≠ 0."""
    grad = torch.is_grad_enabled()
    if grad and input.is_leaf and input.requires_grad:
        raise RuntimeError(f"{name}(inplace=True) overwrites its input, which here is a leaf tensor that "
                           "requires grad; feed it the output of another layer (or x.clone())")
    if grad and weight is not None and weight.requires_grad and bool((weight == 0).any()):
        raise ValueError(f"{name}(inplace=True) recovers x̂ = (z − β)/γ in backward and cannot with γ = 0 "
                         "in some channel; use inplace=False for this layer")


@fx_leaf
def graph_batch_norm_act(input: Tensor, weight, bias, running_mean, running_var, num_batches_tracked,
                         ranks: tuple, use_batch: bool, update: bool, momentum, eps: float, guard: bool,
                         act: str, act_param: float, inplace: bool, name: str) -> Tensor:
    """A BatchNormAct layer's fused forward as a function of its tensors and resolved configuration.

    What ``torch.fx.symbolic_trace`` of a bare layer records (see ``batchnorm._fx_root_forward``).
    """
    _dim_error(input, ranks)
    F.check_input(input, running_mean, running_var, weight, bias, training=use_batch, eps=eps)
    if not use_batch:
        return kernels.bn_eval(input, running_mean, running_var, weight, bias, eps, act=act, act_param=act_param)
    if inplace:
        _check_inplace_input(name, input, weight)
    if not update:
        return kernels.bn_train(input, weight, bias, None, None, None, momentum, eps, False, act, act_param,
                                inplace=inplace)[0]
    return kernels.bn_train(input, weight, bias, running_mean, running_var, num_batches_tracked, momentum, eps,
                            guard, act, act_param, inplace=inplace)[0]


class _BatchNormAct:
    """The fused forward, mixed in before a bnlab BatchNorm class (which owns state and mode)."""

    inplace = False

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None, *,
                 act="relu", negative_slope: float = 0.01, inplace: bool = False, bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.act = _resolve_act(act, negative_slope)
        self.inplace = bool(inplace)
        if self.inplace:
            _check_invertible(self, act_spec(self.act))

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if name == "act":
            # what TorchScript passes to the operators ("" = not fusable: scripting refuses)
            kind, p = act_spec(value) or ("", 0.0)
            super().__setattr__("_act_kind", kind)
            super().__setattr__("_act_param", p)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", inplace=True" if self.inplace else "")

    def _forward_impl(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        # the registered tensors and the activation, read from the Module's dicts once
        # (Module.__getattr__ per access cost ~13 µs a call here: 26.7 against BN's 13.4 µs in eval)
        spec = act_spec(self._modules["act"])
        if spec is None:                                             # a replaced act: BN, then act
            if self.inplace:
                _check_invertible(self, spec)
            return self._modules["act"](super()._forward_impl(input))
        kind, p = spec
        rm, rv, w, b = _layer_tensors(self)
        use_batch = self._batch_stats_policy(rm, rv)
        # every check happens before any state changes: a bad call leaves the buffers as they were
        F.check_input(input, rm, rv, w, b, training=use_batch, eps=self.eps)
        if not use_batch:
            # Alg. 2, then g, in one elementwise pass (in eval the output is a new tensor even with inplace)
            return kernels.bn_eval(input, rm, rv, w, b, self.eps, act=kind, act_param=p)
        if self.inplace:
            self._check_inplace(input, kind, p)
        # Alg. 1, then g: one pass for the statistics, one elementwise pass (over the input if inplace);
        # the operator folds the batch statistics into the running ones (guarded) when this layer updates them
        if not self._updates_running_stats():
            return kernels.bn_train(input, w, b, None, None, None, 0.0, self.eps,
                                    False, kind, p, inplace=self.inplace)[0]
        y, _, _, ok = kernels.bn_train(input, w, b, rm, rv, self._buffers.get("num_batches_tracked"), self.momentum,
                                       self.eps, self.nonfinite_guard, kind, p, inplace=self.inplace)
        self._note_guard(ok)
        return y

    _direct_act = staticmethod(act_spec)                            # for _BatchNorm.forward's direct path

    def _scripted_forward(self, input: Tensor) -> Tensor:
        """The forward TorchScript compiles: the same policy and operators, with the activation.

        No Python-side guard bookkeeping (``skipped_batches``); the guard acts inside the operator.
        """
        kind, p = self._act_kind, self._act_param
        if kind == "":
            raise RuntimeError("BatchNormAct: TorchScript needs a fusable act (identity, relu, leaky_relu, silu)")
        use_batch, update = self._scripted_policy()
        rm = self.running_mean
        rv = self.running_var
        if not use_batch:
            if rm is None or rv is None:
                raise RuntimeError("running_mean must be defined in evaluation mode")
            return torch.ops.bnlab.bn_eval(input, rm, rv, self.weight, self.bias, self.eps, kind, p)
        if update and rm is not None:
            if self.inplace:
                torch.ops.bnlab.bn_train_(input, self.weight, self.bias, rm, rv, self.num_batches_tracked,
                                          self.momentum, self.eps, self.nonfinite_guard, kind, p)
                return input
            return torch.ops.bnlab.bn_train(input, self.weight, self.bias, rm, rv, self.num_batches_tracked,
                                            self.momentum, self.eps, self.nonfinite_guard, kind, p)[0]
        if self.inplace:
            torch.ops.bnlab.bn_train_(input, self.weight, self.bias, None, None, None, 0.0, self.eps, False, kind, p)
            return input
        return torch.ops.bnlab.bn_train(input, self.weight, self.bias, None, None, None, 0.0, self.eps,
                                        False, kind, p)[0]

    def _check_inplace(self, input: Tensor, kind: str, p: float) -> None:
        _check_invertible(self, (kind, p))
        _check_inplace_input(type(self).__name__, input, self.weight)

    def _fx_graph_call(self):
        """The bare fx graph (see ``batchnorm._fx_root_forward``): the fused node, or BN's node then ``act``."""
        if type(self)._forward_impl is not _BatchNormAct._forward_impl or not self._fx_plain_ranks():
            return None
        w, b, rm, rv, nbt = self._fx_state()
        use_batch, update = self._batch_stats_policy(rm, rv), self._updates_running_stats()
        spec = act_spec(self.act)
        if spec is None:                                             # a replaced act: BN, then act
            if self.inplace:
                _check_invertible(self, spec)
            return graph_batch_norm, (w, b, rm, rv, nbt, self._ranks, use_batch, update, self.momentum, self.eps,
                                      self.nonfinite_guard), self.act
        if self.inplace and use_batch:
            _check_invertible(self, spec)
        return graph_batch_norm_act, (w, b, rm, rv, nbt, self._ranks, use_batch, update, self.momentum,
                                      self.eps, self.nonfinite_guard, spec[0], spec[1], self.inplace,
                                      type(self).__name__)

    def to_torch(self) -> nn.Sequential:
        """``nn.Sequential(torch.nn.BatchNorm*d, activation)`` with this layer's state and mode."""
        cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[self._rank]
        ref = self.weight if self.weight is not None else self.running_mean
        factory = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
        bn = cls(self.num_features, self.eps, self.momentum, self.affine, self.track_running_stats, **factory)
        if self.affine and self.bias is None:
            bn.register_parameter("bias", None)
        bn.load_state_dict(self.state_dict())
        bn.train(self.training)
        return nn.Sequential(bn, type(self.act)(**({"negative_slope": self.act.negative_slope}
                                                    if isinstance(self.act, nn.LeakyReLU) else {})))


_DIRECT_IMPLS.add(_BatchNormAct._forward_impl)

_DOC = r"""Batch Normalization over a {ndim} input fused with an activation: ``g(BN(x))``.

    The paper's ``z = g(BN(Wu))`` (Ioffe & Szegedy, 2015, Section 3.2) in one layer:
    :class:`bnlab.{bn}` (Algorithm 1 in training, Algorithm 2 in eval, same
    constructor, buffers, momentum and variance conventions), then ``g``:

    .. math:: y = g\!\left(\gamma \frac{{x - \mathrm{{E}}[x]}}{{\sqrt{{\mathrm{{Var}}[x] + \epsilon}}}} + \beta\right)

    with ``g`` one of identity, ReLU, leaky ReLU, SiLU. The state_dict is exactly a
    BatchNorm's (timm's ``BatchNormAct2d`` layout; the activation is the child
    module ``act`` and has no state). Backward keeps only the input (torch's BN→ReLU
    keeps the input and the output).

    Args:
        num_features, eps, momentum, affine, track_running_stats, bias: as
            :class:`bnlab.{bn}`.
        act: ``"relu"`` (default), ``"leaky_relu"``, ``"silu"``, ``"identity"``, or an
            ``nn.ReLU``/``nn.LeakyReLU``/``nn.SiLU``/``nn.Identity`` (class or instance).
        negative_slope: slope of ``leaky_relu`` for ``x < 0``. Default: 0.01.
        inplace: In-Place ABN (Rota Bulò et al., 2018): the output overwrites the
            input and backward recovers x̂ by inverting ``g``, so the layer saves one
            activation-sized tensor that is also its output. Needs an invertible ``g``
            (identity or leaky ReLU with slope > 0), γ ≠ 0, and an input nothing else
            reads afterwards (not a residual branch). Default: ``False``.

    Shape:
        - Input: {shape}
        - Output: the same shape, dtype and memory format.

    Example::

        >>> m = bnlab.{name}(64, act="leaky_relu", negative_slope=0.1, inplace=True)
        >>> y = m(torch.randn({example}) * 2)
    """


class BatchNormAct1d(_BatchNormAct, BatchNorm1d):
    __doc__ = _DOC.format(name="BatchNormAct1d", bn="BatchNorm1d", ndim="2D or 3D",
                          shape="(N, C) or (N, C, L)", example="20, 64")
    _rank = 1


class BatchNormAct2d(_BatchNormAct, BatchNorm2d):
    __doc__ = _DOC.format(name="BatchNormAct2d", bn="BatchNorm2d", ndim="4D",
                          shape="(N, C, H, W)", example="20, 64, 8, 8")
    _rank = 2


class BatchNormAct3d(_BatchNormAct, BatchNorm3d):
    __doc__ = _DOC.format(name="BatchNormAct3d", bn="BatchNorm3d", ndim="5D",
                          shape="(N, C, D, H, W)", example="20, 64, 4, 8, 8")
    _rank = 3
