"""Shared fixtures: the kernel backend grid and helpers that compare with PyTorch."""
from __future__ import annotations

import contextlib

import pytest
import torch

import bnlab


def pytest_generate_tests(metafunc):
    # every test that asks for `backend` runs once per registered kernel backend
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", bnlab.available_backends(), indirect=True)


@pytest.fixture
def backend(request):
    """Select a kernel backend for the duration of one test, then restore the previous one."""
    previous = bnlab.get_backend()
    bnlab.set_backend(request.param)
    try:
        yield request.param
    finally:
        bnlab.set_backend(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


class _ForbidTorchBatchNorm(torch.utils._python_dispatch.TorchDispatchMode):
    """Raise if any ATen batch/instance-norm kernel (or cuDNN/MIOpen's) runs."""

    FORBIDDEN = ("batch_norm", "instance_norm", "cudnn", "miopen", "native_layer_norm")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name.startswith("aten::") and any(word in name for word in self.FORBIDDEN):
            raise AssertionError(f"bnlab called PyTorch's {name}")
        return func(*args, **(kwargs or {}))


def _raise(*args, **kwargs):
    raise AssertionError("bnlab called a PyTorch batch-norm entry point")


@contextlib.contextmanager
def forbid_torch_batchnorm():
    """Inside this block, PyTorch's own batch norm cannot run.

    Python entry points (``torch.batch_norm``, ``torch.native_batch_norm``,
    ``torch.instance_norm``, ``F.batch_norm``, ``F.instance_norm`` and every
    ``torch.nn.BatchNorm*d.forward``) are patched to raise, and a dispatch mode
    catches the ATen kernels themselves, in forward and in backward.
    """
    mp = pytest.MonkeyPatch()
    for owner, name in (
        (torch, "batch_norm"), (torch, "native_batch_norm"), (torch, "instance_norm"),
        (torch.nn.functional, "batch_norm"), (torch.nn.functional, "instance_norm"),
        (torch.nn.BatchNorm1d, "forward"), (torch.nn.BatchNorm2d, "forward"),
        (torch.nn.BatchNorm3d, "forward"), (torch.nn.SyncBatchNorm, "forward"),
    ):
        mp.setattr(owner, name, _raise)
    try:
        with _ForbidTorchBatchNorm():
            yield
    finally:
        mp.undo()


def tolerances(dtype: torch.dtype) -> dict:
    """assert_close tolerances for comparing bnlab with PyTorch in ``dtype``."""
    return {
        torch.float64: dict(rtol=1e-9, atol=1e-10),
        torch.float32: dict(rtol=2e-5, atol=2e-5),
        torch.bfloat16: dict(rtol=3e-2, atol=3e-2),
        torch.float16: dict(rtol=4e-3, atol=4e-3),
    }[dtype]


@pytest.fixture
def reference_kernels():
    """The reference kernels on one thread: for tests of the lab, not of kernel speed."""
    previous, threads = bnlab.get_backend(), torch.get_num_threads()
    bnlab.set_backend("reference")
    torch.set_num_threads(1)  # tiny models: one thread is faster and immune to a busy machine
    yield
    bnlab.set_backend(previous)
    torch.set_num_threads(threads)
