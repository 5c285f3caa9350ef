"""Norm-layer factories for the lab's models.

A model takes ``norm_layer``: a callable ``num_features -> nn.Module`` (as torchvision's
``norm_layer`` argument), or ``None`` for no normalization. :func:`norm_factory` turns a
name from the command line (``"batch"``, ``"torch"``, ``"none"``, or any name
``bnlab.get_norm_layer`` knows) into that callable for 1-D (after ``Linear``) or 2-D
(after ``Conv2d``) features.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

import bnlab

__all__ = ["NormFactory", "norm_factory", "norm_names"]

NormFactory = Callable[[int], nn.Module]

_BUILTIN = {
    "batch": {1: bnlab.BatchNorm1d, 2: bnlab.BatchNorm2d},
    "torch": {1: nn.BatchNorm1d, 2: nn.BatchNorm2d},
}


def norm_names() -> list[str]:
    """Names accepted by :func:`norm_factory`."""
    names = {"none", *_BUILTIN}
    try:
        from bnlab.nn.factory import NORM_LAYERS
    except ImportError:  # a library without the factory: the built-in names only
        NORM_LAYERS = ()
    names.update(NORM_LAYERS)
    return sorted(names)


def norm_factory(norm: str | NormFactory | None, dim: int) -> NormFactory | None:
    """Resolve ``norm`` to a ``num_features -> module`` callable for ``dim``-D features.

    ``None`` / ``"none"`` → ``None`` (no normalization); a callable is returned as is;
    ``"torch"`` → ``torch.nn.BatchNorm{dim}d`` (the reference); other names go to
    ``bnlab.get_norm_layer`` when the library has it, else ``"batch"`` → ``bnlab.BatchNorm{dim}d``.
    """
    if norm is None or norm == "none":
        return None
    if callable(norm):
        return norm
    if dim not in (1, 2):
        raise ValueError(f"dim must be 1 or 2, got {dim}")
    if norm == "torch":
        return _BUILTIN["torch"][dim]
    get = getattr(bnlab, "get_norm_layer", None)
    if get is not None:
        try:
            return get(norm, dim=dim)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"unknown norm layer {norm!r}; choose from {norm_names()}") from exc
    if norm in _BUILTIN:
        return _BUILTIN[norm][dim]
    raise ValueError(f"unknown norm layer {norm!r}; choose from {norm_names()}")
