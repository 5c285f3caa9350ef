"""Synchronized Batch Normalization over ``torch.distributed`` (any backend, gloo on CPU too).

``SyncBatchNorm`` normalizes with the statistics of the mini-batch formed by every
rank's shard together, as if one process ran Algorithm 1 on the concatenated
batch. The collectives live in :mod:`bnlab.nn._dist_stats`; the gradient is
Section 3's closed form with the global ``m``, in :class:`SyncBatchNormFunction`
(:mod:`bnlab.nn._sync_step`, with the whole synchronized step).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import functional as F
from . import _dist_stats as ds
from ._sync_step import SyncBatchNormFunction, sync_batch_norm_train
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm

__all__ = ["SyncBatchNorm", "SyncBatchNormFunction", "sync_batch_norm_train", "graph_sync_batch_norm",
           "convert_sync_batchnorm"]


def _check_sync_input(input) -> None:
    """SyncBatchNorm's input check: a tensor (N, C, *), at least 2D, C > 0."""
    if not isinstance(input, Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(input).__name__}")
    if input.dim() < 2:
        raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")
    if input.shape[1] == 0:
        raise ValueError("SyncBatchNorm number of input channels should be non-zero")


def graph_sync_batch_norm(input: Tensor, weight, bias, running_mean, running_var, num_batches_tracked,
                          use_batch: bool, update: bool, momentum, eps: float, guard: bool, training: bool,
                          group_name: str) -> Tensor:
    """A SyncBatchNorm layer's forward as a function of its tensors and resolved configuration.

    What ``torch.fx.symbolic_trace`` of a bare layer records (see ``batchnorm._fx_root_forward``):
    mode and policy resolved at trace time, as for torch's BatchNorm; whether to synchronize
    decided when the graph runs, as the layer does (a process group of more than one rank,
    named by ``group_name``, ``""`` for the world), then :func:`sync_batch_norm_train`; else
    the local Alg. 1 / Alg. 2. The guard acts; a graph cannot count in ``skipped_batches``.
    """
    _check_sync_input(input)
    if training and use_batch:
        group = ds.sync_group(ds.resolve_group(group_name))
        if group is not None:
            return sync_batch_norm_train(input, weight, bias, running_mean, running_var, num_batches_tracked,
                                         momentum, eps, guard, update, group)[0]
    F.check_input(input, running_mean, running_var, weight, bias, training=use_batch, eps=eps)
    if not use_batch:
        return F.batch_norm_eval(input, running_mean, running_var, weight, bias, eps)
    if not update:
        return F.batch_norm_train(input, weight, bias, eps)[0]
    return F.batch_norm_train_tracked(input, weight, bias, running_mean, running_var, num_batches_tracked,
                                      momentum, eps, guard)[0]


class SyncBatchNorm(_BatchNorm):
    r"""Batch Normalization synchronized over the ranks of a process group (Ioffe & Szegedy, 2015).

    A drop-in replacement for ``torch.nn.SyncBatchNorm`` (same constructor,
    parameters, buffers, state_dict) that also runs on CPU with the gloo backend.
    In training mode every rank normalizes its shard with the statistics of the
    mini-batch made of *all* ranks' shards, so ``W`` processes compute exactly
    what one process would compute on the concatenated batch:

    .. math::
        y = \frac{x - \mu_B}{\sqrt{\sigma_B^2 + \epsilon}} \cdot \gamma + \beta, \qquad
        \mu_B = \frac{1}{m}\sum_{r}\sum_{i \in B_r} x_i, \quad
        \sigma_B^2 = \frac{1}{m}\sum_{r}\sum_{i \in B_r} (x_i - \mu_B)^2, \quad m = \sum_r m_r

    Conventions:

    * Statistics: each rank contributes ``(m_r, μ_r, M2_r)``; the summaries are
      all-gathered and merged with Chan et al.'s parallel algorithm
      (``μ = μ_a + δ·n_b/n``, ``M2 = M2_a + M2_b + δ²·n_a·n_b/n``), never with
      ``E[x²] − E[x]²``. Ranks may hold different batch sizes, including **zero**:
      an empty rank still takes part in every collective and returns an empty output.
    * Gradient: Section 3's closed form with the global ``m``; the input gradient
      needs the all-reduced ``Σ dy`` and ``Σ dy·x̂``. ``weight.grad``/``bias.grad``
      hold this rank's part, as in PyTorch; DistributedDataParallel's gradient
      all-reduce completes them.
    * Running statistics: updated with the global μ_B and the global *unbiased*
      variance ``m/(m−1)·σ²_B`` (Algorithm 2), identical on every rank.
      Momentum follows PyTorch (weight of the new batch: 0.1 here = Keras' 0.9;
      ``None`` = cumulative average).
    * When it synchronizes: in training mode with batch statistics, when
      ``torch.distributed`` is initialized and ``process_group`` (default: the
      whole world) has more than one rank. Otherwise — no process group, a group
      of one, eval mode (which never synchronizes, as in PyTorch) — it is exactly
      the local :class:`bnlab.BatchNorm2d` computation, double backward included.
    * Every rank of the group must call forward (and backward) the same number of
      times, as with any collective. The bnlab policy switches of ``_BatchNorm``
      (``use_batch_stats``, ``update_running_stats``, ``nonfinite_guard``) apply.

    Args:
        num_features: C, the number of channels (dim 1).
        eps: ε added to the variance. Default: 1e-5.
        momentum: weight of the new batch in the running average, or ``None``. Default: 0.1.
        affine: learn γ (init 1) and β (init 0). Default: ``True``.
        track_running_stats: keep ``running_mean``/``running_var``/``num_batches_tracked``. Default: ``True``.
        process_group: the ``torch.distributed`` group whose ranks share statistics;
            ``None`` = the default (world) group. Default: ``None``.
        bias: learn β (keyword-only; with ``affine``). Default: ``True``.

    Shape:
        - Input: ``(N, C, *)``, at least 2D; ``N`` may differ between ranks, and be 0.
        - Output: the same shape, dtype and memory format.

    Example::

        >>> # in each of W processes, after dist.init_process_group("gloo", ...)
        >>> model = bnlab.convert_sync_batchnorm(model)
        >>> ddp = torch.nn.parallel.DistributedDataParallel(model)

    Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by
    Reducing Internal Covariate Shift", ICML 2015. Chan, Golub & LeVeque,
    "Updating Formulae and a Pairwise Algorithm for Computing Sample Variances", 1979.
    """

    # TorchScript holds the group by name (``_script_group``): a ProcessGroup object cannot be saved
    __jit_ignored_attributes__ = ["process_group"]

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group=None,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )
        self.process_group = process_group

    def __setstate__(self, state):
        state.setdefault("process_group", None)
        super().__setstate__(state)

    def _check_input_dim(self, input: Tensor) -> None:
        _check_sync_input(input)

    def _group_name(self) -> str:
        """The process group by name: ``""`` for the world (``process_group=None``)."""
        group = getattr(self, "process_group", None)
        return "" if group is None else str(group.group_name)

    def _fx_graph_call(self):
        """``(graph_sync_batch_norm, args after the input)``: the graph of a bare-layer ``torch.fx`` trace."""
        if type(self)._forward_impl is not SyncBatchNorm._forward_impl:
            return None
        w, b, rm, rv, nbt = self._fx_state()
        return graph_sync_batch_norm, (w, b, rm, rv, nbt, self._batch_stats_policy(rm, rv),
                                       self._updates_running_stats(), self.momentum, self.eps, self.nonfinite_guard,
                                       self.training, self._group_name())

    def _sync_group(self):
        """The group to synchronize over for this forward, or ``None`` (local BN)."""
        if not (self.training and self._uses_batch_stats()):
            return None
        return ds.sync_group(self.process_group)

    def __prepare_scriptable__(self):
        """Called by ``torch.jit.script``: the process group by name (a string TorchScript can hold and save)."""
        self._script_group = self._group_name()
        return self

    def _scripted_forward(self, input: Tensor) -> Tensor:
        """TorchScript's forward: the eager policy, synchronized or local.

        As in eager mode, a training step with batch statistics synchronizes only when
        ``torch.distributed`` is initialized and the group has more than one rank (asked at
        run time, ``bnlab::sync_group_size``); it then runs as the operator
        ``bnlab::sync_batch_norm_train`` (the eager collective step, a Python kernel: the
        scripted model needs Python and ``import bnlab``, as it does for every bnlab operator).
        Otherwise it is the local Alg. 1 / Alg. 2 with the operators of
        ``_BatchNorm._scripted_forward`` (repeated here: TorchScript has no ``super()``).
        """
        if input.dim() < 2:
            raise ValueError("expected at least 2D input")
        use_batch, update = self._scripted_policy()
        if not use_batch:
            return self._scripted_eval(input)
        rm = self.running_mean
        rv = self.running_var
        if self.training and torch.ops.bnlab.sync_group_size(input, self._script_group) > 1:
            return torch.ops.bnlab.sync_batch_norm_train(input, self.weight, self.bias, rm, rv,
                                                         self.num_batches_tracked, self.momentum, self.eps,
                                                         self.nonfinite_guard, update, self._script_group)
        if update and rm is not None:
            return torch.ops.bnlab.bn_train(input, self.weight, self.bias, rm, rv, self.num_batches_tracked,
                                            self.momentum, self.eps, self.nonfinite_guard, "identity", 0.0)[0]
        return torch.ops.bnlab.bn_train(input, self.weight, self.bias, None, None, None, 0.0, self.eps,
                                        False, "identity", 0.0)[0]

    def _forward_impl(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        group = self._sync_group()
        if group is None:
            return super()._forward_impl(input)                      # local Alg. 1 / Alg. 2
        if torch.jit.is_tracing():
            # torch.jit.trace records operators, not torch.distributed's Python collectives: the
            # synchronized step goes in as one operator, which runs them whenever the trace runs
            return torch.ops.bnlab.sync_batch_norm_train(
                input, self.weight, self.bias, self.running_mean, self.running_var, self.num_batches_tracked,
                self.momentum, self.eps, self.nonfinite_guard, self._updates_running_stats(), self._group_name())
        y, ok = sync_batch_norm_train(input, self.weight, self.bias, self.running_mean, self.running_var,
                                      self.num_batches_tracked, self.momentum, self.eps, self.nonfinite_guard,
                                      self._updates_running_stats(), group)
        self._note_guard(ok)
        return y

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group=None) -> nn.Module:
        """Same as :func:`bnlab.convert_sync_batchnorm`."""
        return convert_sync_batchnorm(module, process_group)


# bnlab layers converted by exact class: variants (Ghost BN, Batch Renorm, frozen BN)
# carry their own semantics and are left alone
_BNLAB_CONVERTIBLE = (BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm)
_POLICY = ("use_batch_stats", "update_running_stats", "nonfinite_guard", "skipped_batches")


def _is_convertible(module: nn.Module) -> bool:
    if isinstance(module, _BatchNorm):                               # bnlab's: plain BN only
        return type(module) in _BNLAB_CONVERTIBLE
    return isinstance(module, nn.modules.batchnorm._BatchNorm)       # PyTorch's, as its own converter


def _to_sync(layer: nn.Module, process_group) -> SyncBatchNorm:
    """A SyncBatchNorm that shares ``layer``'s parameters and buffers (as PyTorch's converter does)."""
    if layer.num_features == 0:
        raise ValueError(f"convert_sync_batchnorm: {type(layer).__name__} has no num_features yet "
                         "(an uninitialized lazy module); run one forward first")
    ref = layer.weight if layer.weight is not None else layer.running_mean
    factory = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    new = SyncBatchNorm(
        layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats,
        process_group, bias=layer.bias is not None, **factory,
    )
    # the same Parameter and buffer objects: optimizers built earlier keep working
    for name in ("weight", "bias"):
        if getattr(layer, name) is not None:
            setattr(new, name, getattr(layer, name))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        setattr(new, name, getattr(layer, name))
    if isinstance(layer, _BatchNorm):
        for name in _POLICY:
            setattr(new, name, getattr(layer, name))
    new.train(layer.training)
    if hasattr(layer, "qconfig"):
        new.qconfig = layer.qconfig
    return new


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` by a :class:`bnlab.SyncBatchNorm`.

    Converts ``torch.nn.BatchNorm1d/2d/3d`` and ``torch.nn.SyncBatchNorm`` (any
    subclass of PyTorch's ``_BatchNorm``, as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``
    does) and bnlab's ``BatchNorm1d/2d/3d`` and ``SyncBatchNorm`` (exact classes;
    bnlab variants keep their semantics). As in PyTorch the new layers *share*
    the old ones' parameters and buffers (``weight``, ``bias``, ``running_mean``,
    ``running_var``, ``num_batches_tracked``), and keep hyper-parameters, training
    mode and bnlab's policy switches, so state_dict keys are unchanged and load
    both ways. Children are replaced in place; the (possibly new) root is returned.

    Args:
        module: any ``nn.Module``.
        process_group: the group whose ranks synchronize; ``None`` = the world.

    Example::

        >>> model = bnlab.convert_sync_batchnorm(torchvision_resnet)   # torch BN → bnlab SyncBN
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"convert_sync_batchnorm: expected an nn.Module, got {type(module).__name__}")
    out = _to_sync(module, process_group) if _is_convertible(module) else module
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, process_group))
    return out
