"""The running-statistics update inside bn_train: EMA, cumulative average, the non-finite guard, half types.

Oracle: torch.nn.BatchNorm*d run side by side (its buffers after the same batches).
"""
from __future__ import annotations

import pytest
import torch

from bnlab import kernels as K


def _torch_bn(c, momentum, dtype=torch.float32):
    return torch.nn.BatchNorm1d(c, momentum=momentum, dtype=dtype)


@pytest.mark.parametrize("momentum", [0.1, 0.5, None], ids=str)
def test_buffers_follow_torch(momentum, backend):
    """Finite input: the guard changes nothing — buffers and count equal torch's after several batches."""
    ref = _torch_bn(4, momentum, torch.float64)
    rm, rv, nbt = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64), torch.tensor(0)
    for i in range(4):
        x = torch.randn(7, 4, 3, dtype=torch.float64) * (i + 1) + i
        ref(x)
        *_, ok = K.bn_train(x, None, None, rm, rv, nbt, momentum, 1e-5, True)
        assert bool(ok)
    torch.testing.assert_close(rm, ref.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv, ref.running_var, rtol=1e-12, atol=1e-12)
    assert int(nbt) == int(ref.num_batches_tracked) == 4


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=str)
def test_nonfinite_batch_leaves_buffers_and_count(bad, momentum, backend):
    rm, rv, nbt = torch.randn(3), torch.rand(3) + 0.5, torch.tensor(5)
    before = (rm.clone(), rv.clone(), nbt.clone())
    x = torch.randn(6, 3, 4)
    x[2, 1, 3] = bad
    y, mean, var, ok = K.bn_train(x, None, None, rm, rv, nbt, momentum, 1e-5, True)
    assert not bool(ok) and ok.dtype == torch.bool and ok.dim() == 0
    for got, want in zip((rm, rv, nbt), before):
        assert torch.equal(got, want)
    # without the guard the update happens (and carries the NaN/inf, as torch's would)
    *_, ok = K.bn_train(x, None, None, rm, rv, nbt, momentum, 1e-5, False)
    assert bool(ok) and int(nbt) == 6 and not torch.isfinite(rv).all()


def test_float16_running_var_does_not_overflow(backend):
    """BatchNorm1d(1, dtype=float16) on [-300, 300, -300, 300]: running_var ≈ 12000 like torch, not inf."""
    x = torch.tensor([[-300.0], [300.0], [-300.0], [300.0]], dtype=torch.float16)
    ref = _torch_bn(1, 0.1, torch.float16)
    ref(x)
    rm, rv, nbt = torch.zeros(1, dtype=torch.float16), torch.ones(1, dtype=torch.float16), torch.tensor(0)
    y, mean, var, ok = K.bn_train(x, None, None, rm, rv, nbt, 0.1, 1e-5, True)
    assert bool(ok) and mean.dtype == torch.float32 and float(var) == 90000.0
    assert torch.isfinite(rv).all()
    torch.testing.assert_close(rv.float(), ref.running_var.float(), rtol=1e-3, atol=0)
    assert abs(float(rv) - 12000.9) < 10


def test_no_buffers_no_update(backend):
    x = torch.randn(5, 2)
    y, mean, var, ok = K.bn_train(x, None, None, None, None, None, 0.1, 1e-5)
    torch.testing.assert_close(y, (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5), rtol=1e-5, atol=1e-5)
    assert bool(ok)
    nbt = torch.tensor(2)
    K.bn_train(x, None, None, None, None, nbt, 0.1, 1e-5)
    assert int(nbt) == 3


def test_momentum_none_needs_a_count(backend):
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        K.bn_train(torch.randn(4, 2), None, None, torch.zeros(2), torch.ones(2), None, None, 1e-5)


def test_buffers_carry_no_history(backend):
    x = torch.randn(4, 3, requires_grad=True)
    rm, rv = torch.zeros(3), torch.ones(3)
    K.bn_train(x, None, None, rm, rv, torch.tensor(0), 0.1, 1e-5)
    assert rm.grad_fn is None and rv.grad_fn is None and not rm.requires_grad
