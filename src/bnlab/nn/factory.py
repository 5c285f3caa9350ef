"""``get_norm_layer``: normalization layers by name, for model builders.

A model takes a ``norm_layer`` callable ``num_features -> nn.Module`` (the
torchvision convention) and the lab picks it by name::

    norm = bnlab.get_norm_layer("ghost", virtual_batch_size=16)
    block = nn.Sequential(nn.Conv2d(3, 64, 3), norm(64), nn.ReLU())
"""
from __future__ import annotations

import functools
import inspect

from torch import nn

from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .frozen import FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d
from .ghost import GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d
from .renorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d

__all__ = ["get_norm_layer", "NORM_LAYERS", "default_num_groups"]

_BY_DIM = {
    "batch": {1: BatchNorm1d, 2: BatchNorm2d, 3: BatchNorm3d},
    "ghost": {1: GhostBatchNorm1d, 2: GhostBatchNorm2d, 3: GhostBatchNorm3d},
    "renorm": {1: BatchRenorm1d, 2: BatchRenorm2d, 3: BatchRenorm3d},
    "frozen": {1: FrozenBatchNorm1d, 2: FrozenBatchNorm2d, 3: FrozenBatchNorm3d},
}

#: the names ``get_norm_layer`` accepts
NORM_LAYERS = ("batch", "ghost", "renorm", "sync", "frozen", "group", "layer", "none")


def default_num_groups(num_channels: int, max_groups: int = 32) -> int:
    """The largest divisor of ``num_channels`` that is at most ``max_groups``.

    32 groups is the default of Wu & He, "Group Normalization", ECCV 2018; for
    channel counts it does not divide (e.g. 48 → 24, 10 → 10, 7 → 7) the
    nearest smaller divisor keeps GroupNorm constructible.
    """
    for g in range(min(max_groups, num_channels), 0, -1):
        if num_channels % g == 0:
            return g
    return 1


def _group_norm(num_features: int, num_groups: int | None = None, eps: float = 1e-5, affine: bool = True,
                device=None, dtype=None) -> nn.GroupNorm:
    """``nn.GroupNorm`` over ``num_features`` channels, ``num_groups`` defaulting to a divisor ≤ 32."""
    g = default_num_groups(num_features) if num_groups is None else num_groups
    if num_features % g != 0:
        raise ValueError(f"GroupNorm: num_groups={g} does not divide num_features={num_features}")
    return nn.GroupNorm(g, num_features, eps=eps, affine=affine, device=device, dtype=dtype)


def _layer_norm(num_features: int, eps: float = 1e-5, affine: bool = True, device=None, dtype=None) -> nn.GroupNorm:
    """Layer Normalization over (C, *) for any (N, C, *) input: ``GroupNorm(1, C)``."""
    return nn.GroupNorm(1, num_features, eps=eps, affine=affine, device=device, dtype=dtype)


def _identity(num_features: int) -> nn.Identity:
    return nn.Identity()


def _sync_class():
    # imported on demand: SyncBatchNorm lives in its own module (torch.distributed)
    from .sync import SyncBatchNorm

    return SyncBatchNorm


def _check_kwargs(target, kwargs: dict) -> None:
    """Bind ``(num_features, **kwargs)`` to the constructor that will really receive them."""
    if not isinstance(target, type):
        inspect.signature(target).bind(1, **kwargs)
        return
    for klass in target.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            continue                                                 # a pass-through __init__: look further up
        inspect.signature(init).bind(None, 1, **kwargs)
        return


def get_norm_layer(name: str, **kwargs):
    """A callable ``num_features -> nn.Module`` for the normalization named ``name``.

    ========  ============================================================
    name      layer
    ========  ============================================================
    batch     :class:`bnlab.BatchNorm2d` (``dim=1|2|3`` picks 1d/2d/3d)
    ghost     :class:`bnlab.GhostBatchNorm2d` (``virtual_batch_size=...``)
    renorm    :class:`bnlab.BatchRenorm2d` (``r_max=...``, schedule, ...)
    sync      :class:`bnlab.SyncBatchNorm` (``process_group=...``)
    frozen    :class:`bnlab.FrozenBatchNorm2d`
    group     ``nn.GroupNorm(num_groups, C)``; ``num_groups`` defaults to the
              largest divisor of C that is ≤ 32 (:func:`default_num_groups`)
    layer     ``nn.GroupNorm(1, C)``: Layer Normalization over (C, *) with a
              per-channel affine, for (N, C) and (N, C, H, W) inputs alike
    none      ``nn.Identity()``
    ========  ============================================================

    ``kwargs`` go to the layer's constructor (checked now, so a typo fails here
    and not when the model is built); ``dim`` (default 2) selects the input rank
    for the BatchNorm family. The result is a ``functools.partial`` (picklable).

    Example::

        >>> norm = bnlab.get_norm_layer("group", num_groups=8)
        >>> norm(64).num_groups
        8
    """
    if not isinstance(name, str) or name.lower() not in NORM_LAYERS:
        raise ValueError(f"get_norm_layer: unknown normalization {name!r}; choose one of {list(NORM_LAYERS)}")
    name = name.lower()
    dim = kwargs.pop("dim", 2)
    if name in _BY_DIM:
        if dim not in (1, 2, 3):
            raise ValueError(f"get_norm_layer: dim must be 1, 2 or 3, got {dim!r}")
        target = _BY_DIM[name][dim]
    elif name == "sync":
        target = _sync_class()
    elif name == "group":
        target = _group_norm
    elif name == "layer":
        target = _layer_norm
    else:
        target = _identity
    try:
        _check_kwargs(target, kwargs)
    except TypeError as err:
        raise TypeError(f"get_norm_layer({name!r}): bad keyword arguments {sorted(kwargs)}: {err}") from None
    return functools.partial(target, **kwargs)
