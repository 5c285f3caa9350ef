"""The two bindings of PyTorch's batch-norm names under which tests/peer runs: torch's own, and bnlab's.

Run PyTorch's own batch-norm tests twice: on torch's layers, then with torch's names bound to bnlab's.

Every test in this folder takes the ``binding`` fixture (autouse), parametrized ``torch`` and
``bnlab``.  Under ``bnlab`` the *names* ``torch.nn.BatchNorm1d/2d/3d``, ``torch.nn.SyncBatchNorm``
(in ``torch.nn``, ``torch.nn.modules`` and ``torch.nn.modules.batchnorm``),
``torch.nn.functional.batch_norm`` and ``torch.batch_norm`` point at bnlab's objects for the
test's duration and are restored afterwards.  The classes themselves are never modified:
bnlab's layers subclass torch's, so patching a class would change bnlab too.

Under ``bnlab`` a dispatch mode also refuses every ATen batch-norm kernel, so a test that
passes there cannot have reached PyTorch's implementation through a reference it kept.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.modules.batchnorm as _torch_bn_module
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

import bnlab
import bnlab.functional as bnlab_F

# torch's own objects, captured before any test rebinds the names: the oracle for parity checks.
TORCH = {
    "BatchNorm1d": torch.nn.BatchNorm1d,
    "BatchNorm2d": torch.nn.BatchNorm2d,
    "BatchNorm3d": torch.nn.BatchNorm3d,
    "SyncBatchNorm": torch.nn.SyncBatchNorm,
    "batch_norm": torch.nn.functional.batch_norm,
}

BINDINGS = ("torch", "bnlab", "bnlab_ref")  # bnlab_ref: bnlab on its reference backend


def _torch_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps,
                      cudnn_enabled=True):
    """``torch.batch_norm``'s positional signature, computed by bnlab."""
    del cudnn_enabled  # no cuDNN on the paths bnlab runs
    return bnlab_F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


def bnlab_targets():
    """(namespace, attribute, bnlab object) for every name the ``bnlab`` binding rebinds."""
    targets = []
    for owner in (torch.nn, torch.nn.modules, _torch_bn_module):
        for name in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"):
            targets.append((owner, name, getattr(bnlab, name)))
    targets.append((torch.nn.functional, "batch_norm", bnlab_F.batch_norm))
    targets.append((torch, "batch_norm", _torch_batch_norm))
    return targets


class RefuseTorchBatchNormKernels(TorchDispatchMode):
    """Raise if an ATen batch-norm kernel (native, cuDNN, MIOpen, with-update) runs."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name.startswith("aten::") and ("batch_norm" in name or "cudnn" in name or "miopen" in name):
            raise AssertionError(f"the bnlab binding reached PyTorch's {name}")
        return func(*args, **(kwargs or {}))


_TORCH_FUNCTIONS = ((torch.nn.functional, "batch_norm", torch.nn.functional.batch_norm),
                    (torch, "batch_norm", torch.batch_norm))


@contextlib.contextmanager
def torch_oracle():
    """Run PyTorch's own batch norm inside this block, whatever the binding: the reference for parity checks."""
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in _TORCH_FUNCTIONS]
    for owner, attr, value in _TORCH_FUNCTIONS:
        setattr(owner, attr, value)
    try:
        with _disable_current_modes():
            yield
    finally:
        for owner, attr, value in saved:
            setattr(owner, attr, value)
