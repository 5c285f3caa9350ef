"""Former entry points, kept while callers move to :mod:`bnlab.kernels`' functions.

``batch_norm_train(x, weight, bias, eps) -> (y, mean, var)`` and
``batch_norm_eval(x, mean, var, weight, bias, eps) -> y`` call the ``bnlab``
operators; ``LEGACY`` has the former backend contract's ``forward_eval``.
"""
from __future__ import annotations

from types import SimpleNamespace

from .. import kernels as _k


def batch_norm_train(x, weight, bias, eps):
    y, mean, var, _ok = _k.bn_train(x, weight, bias, None, None, None, 0.0, float(eps), False)
    return y, mean, var


def batch_norm_eval(x, mean, var, weight, bias, eps):
    return _k.bn_eval(x, mean, var, weight, bias, float(eps))


def _forward_eval(x, mean, var, weight, bias, eps):
    return _k.bn_eval(x, mean, var, weight, bias, float(eps))


LEGACY = SimpleNamespace(NAME="ops", forward_eval=_forward_eval)
