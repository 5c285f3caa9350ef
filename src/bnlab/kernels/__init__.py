"""Kernel backends and their dispatch.

A backend is a module exposing ``NAME`` and four functions with the contract of
:mod:`bnlab.kernels.reference`::

    forward_train(x, weight, bias, eps)              -> (y, mean, var_biased)
    forward_eval(x, mean, var, weight, bias, eps)    -> y
    backward(dy, x, weight, mean, invstd, needs)     -> (dx, dweight, dbias)
    backward_eval(dy, x, weight, mean, invstd, needs)-> (dx, dweight, dbias)

and optionally ``supports(x) -> bool`` (default: always). The backend is chosen by
:func:`set_backend` or the environment variable ``BNLAB_BACKEND``; ``"auto"`` picks
the fastest backend that supports the input and falls back to ``"reference"``.
"""
from __future__ import annotations

import os
from types import ModuleType

from . import reference

__all__ = ["set_backend", "get_backend", "available_backends", "select", "register_backend"]

_BACKENDS: dict[str, ModuleType] = {"reference": reference}
# preference order for "auto"; backends register themselves in front of "reference"
_AUTO_ORDER: list[str] = ["reference"]
_state = {"backend": None}


def register_backend(module: ModuleType, auto: bool = True) -> None:
    """Make ``module`` selectable by its ``NAME`` (and preferred by ``"auto"``)."""
    _BACKENDS[module.NAME] = module
    if auto and module.NAME not in _AUTO_ORDER:
        _AUTO_ORDER.insert(0, module.NAME)


def available_backends() -> list[str]:
    """Names accepted by :func:`set_backend`, besides ``"auto"``."""
    return sorted(_BACKENDS)


def set_backend(name: str) -> None:
    """Choose the kernel backend: ``"auto"`` (default), ``"reference"`` or a registered one.

    The environment variable ``BNLAB_BACKEND`` sets the initial choice.
    """
    if not isinstance(name, str) or (name != "auto" and name not in _BACKENDS):
        raise ValueError(
            f"unknown bnlab backend {name!r}; choose one of {['auto'] + available_backends()}"
        )
    _state["backend"] = name


def get_backend() -> str:
    """The backend name in force (``"auto"`` unless set)."""
    if _state["backend"] is None:
        env = os.environ.get("BNLAB_BACKEND", "auto").strip() or "auto"
        set_backend(env)
    return _state["backend"]


def select(x) -> ModuleType:
    """The backend module that will run on tensor ``x``."""
    name = get_backend()
    if name != "auto":
        mod = _BACKENDS[name]
        supports = getattr(mod, "supports", None)
        # an explicit choice that cannot run this input (another device, say) uses the reference
        return mod if supports is None or supports(x) else reference
    for cand in _AUTO_ORDER:
        mod = _BACKENDS[cand]
        supports = getattr(mod, "supports", None)
        if supports is None or supports(x):
            return mod
    return reference


# the fused CPU kernels register themselves in front of the reference; numba itself is
# imported lazily, on the first call that can use it (see ``numba_cpu``)
try:
    from . import numba_cpu as _numba_cpu

    register_backend(_numba_cpu)
except Exception:  # pragma: no cover - a broken install must not break ``import bnlab``
    pass
