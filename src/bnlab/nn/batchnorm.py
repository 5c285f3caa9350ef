"""Batch Normalization layers: drop-in replacements for ``torch.nn.BatchNorm1d/2d/3d``.

bnlab's layers *are* PyTorch BatchNorm layers to every tool that asks:
``bnlab.BatchNorm2d`` subclasses ``torch.nn.BatchNorm2d`` (as timm's ``BatchNormAct2d``
does), so ``isinstance`` checks (``torch.optim.swa_utils.update_bn``, weight-decay
splits, ``torch.func.replace_all_batch_norm_modules_``, freeze patterns) see them.
PyTorch's ``_NormBase`` supplies the constructor, parameters, buffers and the
state_dict conventions (``_version`` 2); bnlab's ``_BatchNorm`` overrides the mode
logic (which statistics normalize, which get updated) and the math, which is in
:mod:`bnlab.functional` — no PyTorch batch-norm kernel runs.
"""
import functools
import warnings

import torch
import torch.fx
from torch import Tensor, nn

from .. import functional as F
from .. import kernels as K
from .._stats import count_per_channel
from ..errors import BatchNormInputTypeError

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]

_TorchBatchNorm = nn.modules.batchnorm._BatchNorm
_IDENTITY, _UNFUSED = ("identity", 0.0), ("", 0.0)
_MISSING = object()
_STATE_NAMES = ("running_mean", "running_var", "weight", "bias")
# the _forward_impl functions _BatchNorm.forward's direct path stands in for (_BatchNorm's, BatchNormAct's)
_DIRECT_IMPLS: set = set()
# methods that, set on an instance, take that layer off the direct path
_DIRECT_HOOKS = frozenset({"_forward_impl", "_check_input_dim", "_batch_stats_policy", "_updates_running_stats",
                           "_note_guard", "_count_skipped"})


def _layer_tensors(module: nn.Module) -> tuple:
    """``(running_mean, running_var, weight, bias)`` as the layer's forward uses them.

    Read from the Module's dicts (``Module.__getattr__`` is slow per call); one that is not in
    them any more is read as an attribute — ``torch.nn.utils.parametrize`` turns a parameter
    into a property, ``torch.nn.utils.prune`` into a tensor it sets before each forward.
    """
    bufs, params = module._buffers, module._parameters
    got = (bufs.get("running_mean", _MISSING), bufs.get("running_var", _MISSING),
           params.get("weight", _MISSING), params.get("bias", _MISSING))
    if got[0] is _MISSING or got[1] is _MISSING or got[2] is _MISSING or got[3] is _MISSING:
        got = tuple(getattr(module, n, None) if t is _MISSING else t for n, t in zip(_STATE_NAMES, got))
    return got


def _forward(module: nn.Module, input: Tensor) -> Tensor:
    """``module``'s forward. ``torch.fx`` records a call to it as one graph node."""
    return module._forward_impl(input)


def _is_fx_root(module: nn.Module, input) -> bool:
    """True while ``torch.fx.symbolic_trace(module)`` traces ``module`` itself (the graph's root)."""
    return isinstance(input, torch.fx.Proxy) and input.tracer.root is module


def _check_not_fx_root(module: nn.Module, input) -> None:
    """Refuse a bare-layer fx trace for a layer class that has no graph form (see ``_fx_graph_call``)."""
    if _is_fx_root(module, input):
        raise TypeError(
            f"torch.fx.symbolic_trace of a bare {module._get_name()}: trace a model that contains it, "
            "e.g. torch.fx.symbolic_trace(nn.Sequential(layer))")


def _fx_root_forward(module: nn.Module, input):
    """The graph of ``torch.fx.symbolic_trace(layer)``: one ``call_function`` node of a bnlab function.

    Inside a model a layer is one node calling the layer (``_forward``); a bare layer cannot
    refer to itself in its own graph, so its node calls a pure function of the input, the
    layer's tensors (``get_attr`` nodes: the GraphModule's own parameters and buffers, which
    it updates in training mode as the layer does) and its configuration, resolved at trace
    time as torch's own BatchNorm is (mode, momentum, eps).
    """
    call = module._fx_graph_call()
    if call is None:
        _check_not_fx_root(module, input)
    fn, args, *after = call                                         # after: modules applied to the node's output
    out = input.tracer.create_proxy("call_function", fn, (input, *args), {})
    for m in after:
        out = m(out)
    return out


def fx_leaf(fn):
    """``fn(input, *args)`` as one ``call_function`` node whenever fx traces a call of it.

    The graph functions below must stay single nodes in every trace — the first one, and
    the re-trace a GraphModule runs when it is unpickled (its code calls them directly).
    """
    @functools.wraps(fn)
    def node(input, *args):
        if isinstance(input, torch.fx.Proxy):
            return input.tracer.create_proxy("call_function", node, (input, *args), {})
        return fn(input, *args)
    return node


def _layer_forward(input: Tensor, weight, bias, running_mean, running_var, num_batches_tracked,
                   use_batch: bool, update: bool, momentum, eps: float, guard: bool):
    """A BatchNorm layer's forward after its rank check: ``(y, ok)`` (``ok`` None without an update).

    Every check happens before any state changes: a bad call leaves the buffers as they were.
    """
    F.check_input(input, running_mean, running_var, weight, bias, training=use_batch, eps=eps)
    if not use_batch:
        # Alg. 2: y = γ·(x − E[x])/sqrt(Var[x] + ε) + β with the population estimates
        return F.batch_norm_eval(input, running_mean, running_var, weight, bias, eps), None
    # Alg. 1 with the mini-batch statistics μ_B, σ²_B; the operator folds them into the
    # running ones in place (guarded) when the layer updates them
    if not update:
        return F.batch_norm_train(input, weight, bias, eps)[0], None
    return F.batch_norm_train_tracked(input, weight, bias, running_mean, running_var, num_batches_tracked,
                                      momentum, eps, guard)


@fx_leaf
def graph_batch_norm(input: Tensor, weight, bias, running_mean, running_var, num_batches_tracked,
                     ranks: tuple, use_batch: bool, update: bool, momentum, eps: float, guard: bool) -> Tensor:
    """A bnlab BatchNorm layer's forward as a function of its tensors and resolved configuration.

    What ``torch.fx.symbolic_trace`` of a bare layer records: the checks, Alg. 1 (updating
    the running statistics in place when ``update``) or Alg. 2, exactly as the layer's forward
    (whose guard bookkeeping, ``skipped_batches``, needs the layer: the guard itself acts).
    """
    _dim_error(input, ranks)
    return _layer_forward(input, weight, bias, running_mean, running_var, num_batches_tracked,
                          use_batch, update, momentum, eps, guard)[0]


# symbolic_trace records bnlab layers as one call_function node each (the layer's own
# Python checks and branches need real tensors); the GraphModule calls the layer at run time
torch.fx.wrap("_forward")


class _BatchNorm(_TorchBatchNorm):
    """Mode logic shared by every bnlab BatchNorm layer.

    Two switches decide what a forward does, each ``None`` (follow the module's
    mode, as PyTorch does) or a bool that overrides it:

    * ``use_batch_stats`` — normalize with the mini-batch statistics (Alg. 1) rather
      than the running ones (Alg. 2). Default: in training mode, or when there are
      no running statistics.
    * ``update_running_stats`` — fold the batch statistics into the running ones.
      Default: in training mode when ``track_running_stats``. Only possible when
      batch statistics are computed.

    ``nonfinite_guard`` (default ``True``): a batch whose statistics are not finite
    (NaN/inf, e.g. an fp16 overflow) does not touch the running statistics nor
    ``num_batches_tracked``; ``skipped_batches`` counts such batches and the layer
    warns once. For finite input the behaviour is exactly PyTorch's.
    """

    # Policy defaults live on the class: an old pickle that never set them reads these;
    # __init__ copies them onto the instance (where TorchScript finds module attributes).
    use_batch_stats: bool | None = None
    update_running_stats: bool | None = None
    nonfinite_guard: bool = True
    skipped_batches: int = 0
    _warned_nonfinite: bool = False

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        # PyTorch's constructor (and its leniency: eps and momentum are checked at use, as there)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        cls = type(self)
        self.use_batch_stats, self.update_running_stats = cls.use_batch_stats, cls.update_running_stats
        self.nonfinite_guard, self.skipped_batches = cls.nonfinite_guard, 0

    def _uses_batch_stats(self) -> bool:
        return self._batch_stats_policy(self.running_mean, self.running_var)

    def _batch_stats_policy(self, rm: Tensor | None, rv: Tensor | None) -> bool:
        """Normalize with the batch statistics? (``use_batch_stats`` or the mode, given the buffers.)"""
        if self.use_batch_stats is not None:
            return bool(self.use_batch_stats) or rm is None
        return self.training or (rm is None and rv is None)

    def _updates_running_stats(self) -> bool:
        if self._buffers.get("running_mean") is None:
            return False
        if self.update_running_stats is not None:
            return bool(self.update_running_stats)
        return self.training and self.track_running_stats

    def _get_name(self) -> str:
        # the repr names the implementation: ``bnlab.BatchNorm2d(8, eps=1e-05, ...)``
        return f"bnlab.{type(self).__name__}"

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self._scripted_forward(input)
        if (self._direct and type(input) is Tensor and input.is_cpu and self.use_batch_stats is None
                and self.update_running_stats is None and input.dim() in self._ranks):
            # the plain eager CPU call in the default policy, in this frame: what _forward_impl does for
            # it. After a convolution has flushed the caches every Python frame, attribute and check
            # between Module.__call__ and the operator costs (docs/kernels.md, "The layers' direct path")
            bufs, params = self._buffers, self._parameters
            rm, rv = bufs.get("running_mean", _MISSING), bufs.get("running_var", _MISSING)
            w, b = params.get("weight", _MISSING), params.get("bias", _MISSING)
            spec = self._direct_act                                  # BatchNormAct: the activation as it is now
            kind, p = _IDENTITY if spec is None else (spec(self._modules["act"]) or _UNFUSED)
            if rm is _MISSING or rv is _MISSING or w is _MISSING or b is _MISSING:
                kind = ""                                            # parametrized or pruned: the general path
            if not self.training and rm is not None and rv is not None:
                # Alg. 2 by the compiled kernel, which refuses what check_input refuses (sizes, dtypes,
                # eps; devices by dispatch): on a refusal (None) the general path below raises the error
                if kind and not (rm.requires_grad or rv.requires_grad):
                    y = K.bn_eval_unchecked(input, rm, rv, w, b, self.eps, kind, p)
                    if y is not None:
                        return y
            elif (kind and (spec is None or not self.inplace)
                  and F.plain_call(input, rm, rv, w, b, True, self.eps)):
                # Alg. 1 (and the running-statistics update, guarded, when this layer tracks them)
                if rm is None or not (self.training and self.track_running_stats):
                    return K.bn_train(input, w, b, None, None, None, 0.0, self.eps, False, kind, p)[0]
                guard = self.nonfinite_guard
                y, _, _, ok = K.bn_train(input, w, b, rm, rv, bufs.get("num_batches_tracked"), self.momentum,
                                         self.eps, guard, kind, p)
                if guard and not ok.item():
                    self._count_skipped(stacklevel=2)
                return y
        if _is_fx_root(self, input):
            return _fx_root_forward(self, input)
        return _forward(self, input)

    # forward's direct path: set per class when it is created (__init_subclass__), True when the
    # class's _forward_impl is _BatchNorm's or BatchNormAct's (_direct_act then reads the act
    # module's spec per call) and the rank check, policy and guard bookkeeping are the plain
    # ones; an instance that gets one of those methods set is taken off it (__setattr__). A
    # method patched on an existing class is not seen: set ``cls._direct = False`` with it.
    _direct: bool = False
    _direct_act = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._direct = (cls._forward_impl in _DIRECT_IMPLS and _plain_rank_check(cls)
                       and cls._batch_stats_policy is _BatchNorm._batch_stats_policy
                       and cls._updates_running_stats is _BatchNorm._updates_running_stats
                       and cls._note_guard is _BatchNorm._note_guard
                       and cls._count_skipped is _BatchNorm._count_skipped)

    def __setattr__(self, name: str, value) -> None:
        if name in _DIRECT_HOOKS:
            object.__setattr__(self, "_direct", False)               # an instance override: the general path
        super().__setattr__(name, value)

    def _fx_plain_ranks(self) -> bool:
        """True when the rank check is one of the ``_Input*d`` mixins' (described by ``_ranks``)."""
        return _plain_rank_check(type(self))

    def _fx_state(self) -> tuple:
        """``(weight, bias, running_mean, running_var, num_batches_tracked)``, each a tensor or None."""
        rm, rv, w, b = _layer_tensors(self)
        return w, b, rm, rv, self._buffers.get("num_batches_tracked")

    def _fx_graph_call(self):
        """``(function, args after the input)`` of this layer's bare fx graph, or None (refused).

        A subclass that overrides ``_forward_impl`` gets None unless it overrides this too.
        """
        if type(self)._forward_impl is not _BatchNorm._forward_impl or not self._fx_plain_ranks():
            return None
        w, b, rm, rv, nbt = self._fx_state()
        return graph_batch_norm, (w, b, rm, rv, nbt, self._ranks, self._batch_stats_policy(rm, rv),
                                  self._updates_running_stats(), self.momentum, self.eps, self.nonfinite_guard)

    def _forward_impl(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        rm, rv, w, b = _layer_tensors(self)
        use_batch = self._batch_stats_policy(rm, rv)
        update = use_batch and self._updates_running_stats()
        y, ok = _layer_forward(input, w, b, rm, rv, self._buffers.get("num_batches_tracked"), use_batch, update,
                               self.momentum, self.eps, self.nonfinite_guard)
        if ok is not None and self.nonfinite_guard and F.is_concrete(ok) and not ok.item():
            self._count_skipped(stacklevel=4)                         # as _note_guard, one frame less
        return y

    def _note_guard(self, ok: Tensor) -> None:
        """Count (and warn once about) a batch the guard kept out of the running statistics.

        Reads ``ok`` only in plain eager mode on real tensors; in traced code the guard
        still acts (inside the operator) but cannot be counted.
        """
        if not self.nonfinite_guard or not F.is_concrete(ok) or ok.item():
            return
        self._count_skipped(stacklevel=5)

    def _count_skipped(self, stacklevel: int) -> None:
        self.skipped_batches += 1
        if not self._warned_nonfinite:
            self._warned_nonfinite = True
            warnings.warn(
                f"{type(self).__name__}: a batch with non-finite statistics was not folded into "
                "the running statistics (counted in .skipped_batches; set nonfinite_guard=False "
                "to disable)",
                RuntimeWarning,
                stacklevel=stacklevel,
            )

    def _scripted_policy(self) -> tuple[bool, bool]:
        """``(use_batch_stats, update_running_stats)`` resolved in TorchScript-compilable code."""
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        ubs = self.use_batch_stats
        if ubs is not None:
            use_batch = ubs or self.running_mean is None
        update = self.training and self.track_running_stats
        urs = self.update_running_stats
        if urs is not None:
            update = urs
        return use_batch, update and self.running_mean is not None

    def _scripted_eval(self, input: Tensor) -> Tensor:
        """Alg. 2 in TorchScript: ``bnlab::bn_eval`` with the running statistics."""
        rm = self.running_mean
        rv = self.running_var
        if rm is None or rv is None:
            raise RuntimeError("running_mean must be defined in evaluation mode")
        return torch.ops.bnlab.bn_eval(input, rm, rv, self.weight, self.bias, self.eps, "identity", 0.0)

    def _scripted_eval_only(self, input: Tensor, refusal: str) -> Tensor:
        """TorchScript forward of a layer whose training step has no script form: Alg. 2, or ``refusal``."""
        if self._scripted_policy()[0]:
            raise RuntimeError(refusal)
        return self._scripted_eval(input)

    def _scripted_forward(self, input: Tensor) -> Tensor:
        """The forward TorchScript compiles: the same policy, the same ``bnlab`` operators.

        No Python-side guard bookkeeping (``skipped_batches``); the guard itself acts
        inside ``bnlab::bn_train``.
        """
        if input.dim() < 2:
            raise ValueError("expected at least 2D input")
        use_batch, update = self._scripted_policy()
        if not use_batch:
            return self._scripted_eval(input)
        rm = self.running_mean
        rv = self.running_var
        if update and rm is not None:
            return torch.ops.bnlab.bn_train(input, self.weight, self.bias, rm, rv, self.num_batches_tracked,
                                            self.momentum, self.eps, self.nonfinite_guard, "identity", 0.0)[0]
        return torch.ops.bnlab.bn_train(input, self.weight, self.bias, None, None, None, 0.0, self.eps,
                                        False, "identity", 0.0)[0]

    @torch.no_grad()
    def _track(self, mean: Tensor, var: Tensor, m: int) -> None:
        """Fold one batch's statistics into the running ones (in place, outside autograd)."""
        if m > 0 and not F.is_concrete(mean, var, self.running_mean):
            # tracing, compiling, fake/meta tensors, functorch: no Python branch on data
            self._track_traceable(mean, var, m)
            return
        if m > 0 and self.nonfinite_guard and not bool(torch.isfinite(mean).all() & torch.isfinite(var).all()):
            self._count_skipped(stacklevel=5)
            return
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)           # cumulative moving average
        else:
            factor = self.momentum                                   # exponential moving average
        self._update_buffers(mean, var, m, factor)

    def _track_traceable(self, mean: Tensor, var: Tensor, m: int) -> None:
        """``_track`` without data-dependent Python branches (tracing, compile, export, fake/meta).

        The guard becomes a mask: a non-finite batch enters the moving average with
        weight 0 (its statistics replaced by finite zeros first, so that no NaN
        reaches the buffers) and does not advance ``num_batches_tracked``; it cannot
        be counted in ``skipped_batches`` nor warned about from inside a graph.
        """
        if self.nonfinite_guard:
            ok = torch.isfinite(mean).all() & torch.isfinite(var).all()
            mean, var = torch.where(ok, mean, 0.0), torch.where(ok, var, 0.0)
        else:
            ok = torch.ones((), dtype=torch.bool, device=mean.device)
        self.num_batches_tracked.add_(ok.long())
        if self.momentum is None:                                    # cumulative moving average
            factor = ok.double() / self.num_batches_tracked.clamp_min(1).double()
        else:                                                        # exponential moving average
            factor = ok.double() * self.momentum
        self._update_buffers(mean, var, m, factor)

    def _update_buffers(self, mean: Tensor, var: Tensor, m: int, factor) -> None:
        """The moving-average step itself (variants such as Batch Renorm override it).

        ``factor`` is the weight of the new batch: a float, or a 0-d tensor in traced code.
        """
        F.update_running_stats(self.running_mean, self.running_var, mean, var, m, factor)


_DIRECT_IMPLS.add(_BatchNorm._forward_impl)

_DOC = r"""Batch Normalization over a {ndim} input (Ioffe & Szegedy, 2015).

    A drop-in replacement for ``torch.nn.{name}``: same constructor, parameters,
    buffers, state_dict and numbers, written from the paper.

    .. math::
        y = \frac{{x - \mathrm{{E}}[x]}}{{\sqrt{{\mathrm{{Var}}[x] + \epsilon}}}} \cdot \gamma + \beta

    The mean and variance are taken per channel over {over}. In training mode
    (Algorithm 1) they are the mini-batch mean μ_B and the *biased* variance
    σ²_B = (1/m) Σ (x_i − μ_B)², and the gradient is the closed form of Section 3.
    At the same time the running estimates are updated,
    ``running = (1 − momentum)·running + momentum·statistic``, with the *unbiased*
    ``m/(m−1)·σ²_B`` for the variance, as in Algorithm 2 and PyTorch. In eval mode
    the running estimates normalize (Algorithm 2's inference network).

    Note on momentum: PyTorch's convention, the weight of the *new* batch. The
    default 0.1 equals Keras/TensorFlow's ``momentum=0.9``. ``None``
    gives the cumulative average over all batches seen (``1/num_batches_tracked``).

    Args:
        num_features: C, the number of channels.
        eps: ε added to the variance for numerical stability. Default: 1e-5.
        momentum: weight of the new batch in the running average, or ``None`` for a
            cumulative average. Default: 0.1.
        affine: learn γ (init 1) and β (init 0). Default: ``True``.
        track_running_stats: keep running estimates (buffers ``running_mean``,
            ``running_var``, ``num_batches_tracked``); if ``False`` batch statistics
            are used in eval mode too. Default: ``True``.
        bias: learn β (keyword-only; with ``affine``). Default: ``True``.

    Shape:
        - Input: {shape}
        - Output: the same shape, dtype and memory format.

    Example::

        >>> m = bnlab.{name}(100)
        >>> y = m(torch.randn({example}))
    """


def _doc(name: str, ndim: str, over: str, shape: str, example: str) -> str:
    return _DOC.format(name=name, ndim=ndim, over=over, shape=shape, example=example)


def _dim_error(input, allowed: tuple[int, ...]) -> None:
    if not isinstance(input, Tensor):
        raise BatchNormInputTypeError(f"expected a torch.Tensor, got {type(input).__name__}")
    if input.dim() not in allowed:
        want = " or ".join(f"{d}D" for d in allowed)
        raise ValueError(f"expected {want} input (got {input.dim()}D input)")


def _plain_rank_check(cls) -> bool:
    """True when ``cls``'s rank check is one of the ``_Input*d`` mixins' (described by ``_ranks``)."""
    return cls._check_input_dim in (_Input1d._check_input_dim, _Input2d._check_input_dim, _Input3d._check_input_dim)


class _Input1d:
    """Input-rank check of the ``*1d`` layers: (N, C) or (N, C, L). Mixed in first."""

    _ranks = (2, 3)

    def _check_input_dim(self, input: Tensor) -> None:
        _dim_error(input, (2, 3))


class _Input2d:
    """Input-rank check of the ``*2d`` layers: (N, C, H, W). Mixed in first."""

    _ranks = (4,)

    def _check_input_dim(self, input: Tensor) -> None:
        _dim_error(input, (4,))


class _Input3d:
    """Input-rank check of the ``*3d`` layers: (N, C, D, H, W). Mixed in first."""

    _ranks = (5,)

    def _check_input_dim(self, input: Tensor) -> None:
        _dim_error(input, (5,))


class BatchNorm1d(_Input1d, _BatchNorm, nn.BatchNorm1d):
    __doc__ = _doc("BatchNorm1d", "2D or 3D", "the batch (and length) dimensions", "(N, C) or (N, C, L)", "20, 100")


class BatchNorm2d(_Input2d, _BatchNorm, nn.BatchNorm2d):
    __doc__ = _doc("BatchNorm2d", "4D", "(N, H, W)", "(N, C, H, W)", "20, 100, 35, 45")


class BatchNorm3d(_Input3d, _BatchNorm, nn.BatchNorm3d):
    __doc__ = _doc("BatchNorm3d", "5D", "(N, D, H, W)", "(N, C, D, H, W)", "20, 100, 35, 45, 10")
