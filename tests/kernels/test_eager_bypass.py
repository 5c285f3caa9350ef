"""The eager-first entry points of ``bnlab.kernels.ops`` skip the operator dispatcher only
when nothing could observe it, and return exactly what the operator returns."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bnlab.kernels import numba_cpu, ops


class _OpLog(TorchDispatchMode):
    """Records the names of the operators dispatched while active."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def _args(x):
    c = x.shape[1]
    w, b = torch.nn.Parameter(torch.rand(c) + 0.5), torch.randn(c)
    return w, b


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 6, 5)], ids=["NC", "NCHW"])
def test_eager_entry_points_match_the_operators(shape):
    """Oracle: the registered custom operator on the same inputs (bit-identical)."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    w, b = _args(x)
    direct = ops.batch_norm_train(x, w, b, 1e-5)
    via_op = ops.batch_norm_train.op(x, w, b, 1e-5)
    for a, o in zip(direct, via_op):
        torch.testing.assert_close(a, o, rtol=0, atol=0)
    mean, var = direct[1], direct[2]
    inv = torch.rsqrt(var + 1e-5)
    dy = torch.randn_like(x)
    torch.testing.assert_close(ops.batch_norm_eval(x, mean, var, w, b, 1e-5),
                               ops.batch_norm_eval.op(x, mean, var, w, b, 1e-5), rtol=0, atol=0)
    for fn in (ops.batch_norm_backward, ops.batch_norm_backward_eval):
        for needs in [(True, True, True), (True, False, False)]:
            got, want = fn(dy, x, w, mean, inv, *needs), fn.op(dy, x, w, mean, inv, *needs)
            for a, o in zip(got, want):
                torch.testing.assert_close(a, o, rtol=0, atol=0)


def test_plain_eager_skips_the_dispatcher_and_modes_see_the_operator():
    x = torch.randn(8, 3)
    w, b = _args(x)
    assert ops._plain_eager(x, w, b, 1e-5)
    with _OpLog() as log:
        assert not ops._plain_eager(x, w, b, 1e-5)
        ops.batch_norm_train(x, w, b, 1e-5)
    assert "bnlab.batch_norm_train.default" in log.names


def test_small_inputs_use_the_serial_builds():
    """Below SERIAL_BELOW elements the single-threaded kernels run (no thread pool)."""
    if not numba_cpu.is_available():
        pytest.skip("numba unavailable")
    from bnlab.kernels import _numba_kernels as K

    assert numba_cpu._k(torch.randn(8, 3)) is K.serial
    big = torch.empty(numba_cpu.SERIAL_BELOW + 1, 1)
    assert numba_cpu._k(big) is (K if numba_cpu._threads(big) > 1 else K.serial)
