"""The fused numba backend against the reference backend and torch.nn.functional.batch_norm."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import gradcheck, gradgradcheck

import bnlab
from bnlab import functional as BF
from bnlab.kernels import numba_cpu, reference, select

pytestmark = pytest.mark.skipif(not numba_cpu.is_available(), reason="numba kernels unavailable")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (shape, memory format): every layout the kernels claim, with short and long inner runs
LAYOUTS = [
    ((33, 5), None),
    ((300, 70), None),
    ((6, 5, 3), None),
    ((4, 6, 40), None),
    ((3, 6, 7, 9), None),
    ((3, 6, 7, 9), torch.channels_last),
    ((2, 3, 4, 3, 5), None),
    ((2, 3, 4, 3, 5), torch.channels_last_3d),
]
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def _make(shape, fmt, dtype, offset=1.0):
    x = (torch.randn(shape, dtype=torch.float64) * 2 + offset).to(dtype)
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    pdt = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    w = torch.rand(shape[1], dtype=pdt) + 0.5
    b = torch.randn(shape[1], dtype=pdt)
    return x, w, b


def _close(a, b, dtype):
    torch.testing.assert_close(a.double(), b.double(), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,fmt", LAYOUTS, ids=str)
def test_kernels_match_reference_and_torch(shape, fmt, dtype):
    x, w, b = _make(shape, fmt, dtype)
    assert numba_cpu.supports(x)
    y, mean, var = numba_cpu.forward_train(x, w, b, 1e-5)
    y_r, mean_r, var_r = reference.forward_train(x, w, b, 1e-5)
    assert y.dtype == x.dtype and y.stride() == x.stride()
    _close(y, y_r, dtype)
    _close(mean, mean_r, torch.float64 if dtype == torch.float64 else torch.float32)
    _close(var, var_r, torch.float64 if dtype == torch.float64 else torch.float32)
    # oracle: PyTorch's own batch norm (float32 math for the half types)
    xt = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    y_t = TF.batch_norm(xt, None, None, w.to(xt.dtype), b.to(xt.dtype), training=True).to(dtype)
    _close(y, y_t, dtype)
    # backward, training and eval, against the reference on the same statistics
    dy = torch.randn_like(x)
    invstd = torch.rsqrt(var_r + 1e-5)
    for fn in ("backward", "backward_eval"):
        got = getattr(numba_cpu, fn)(dy, x, w, mean_r, invstd)
        want = getattr(reference, fn)(dy, x, w, mean_r, invstd)
        assert got[0].stride() == x.stride()
        _close(got[0], want[0], dtype)
        for g, r in zip(got[1:], want[1:]):
            torch.testing.assert_close(g.double(), r.double(), rtol=1e-4 if dtype != torch.float64 else 1e-9,
                                       atol=1e-3 * x.numel() ** 0.5 if dtype != torch.float64 else 1e-9)
    # eval forward
    _close(numba_cpu.forward_eval(x, mean_r, var_r, w, b, 1e-5), reference.forward_eval(x, mean_r, var_r, w, b, 1e-5), dtype)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, True), (False, False, True)])
def test_only_requested_gradients(needs):
    x, w, _ = _make((5, 4, 6), None, torch.float32)
    mean, var = x.mean((0, 2)), x.var((0, 2), unbiased=False)
    for fn in (numba_cpu.backward, numba_cpu.backward_eval):
        got = fn(torch.randn_like(x), x, w, mean, torch.rsqrt(var + 1e-5), needs)
        assert tuple(g is not None for g in got) == needs


@pytest.mark.parametrize("offset", [1e4, 1e5])
@pytest.mark.parametrize("fmt", [None, torch.channels_last], ids=str)
def test_variance_with_large_offset(offset, fmt):
    """offset + N(0,1) in float32: the variance is right to 1e-3 (E[x²]−E[x]² would give garbage)."""
    x = (torch.randn(64, 8, 12, 12, dtype=torch.float64) + offset).float()
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    _, mean, var = numba_cpu.forward_train(x, None, None, 1e-5)
    var_true = x.double().var(dim=(0, 2, 3), unbiased=False)
    assert ((var.double() - var_true).abs() / var_true).max() < 1e-3
    torch.testing.assert_close(mean.double(), x.double().mean(dim=(0, 2, 3)), rtol=1e-7, atol=0)


def test_auto_prefers_numba_on_cpu_and_reference_elsewhere():
    bnlab.set_backend("auto")
    assert select(torch.randn(4, 3, 5)).NAME == "numba"
    assert select(torch.randn(4, 3, 10)[:, :, ::2]).NAME == "reference"                 # strided
    assert select(torch.randn(4, 3, 5, 5)[:, :, 1:]).NAME == "reference"          # not dense
    assert select(torch.randn(4, 3, 5, dtype=torch.complex64)).NAME == "reference"
    assert select(torch.empty(0, 3)).NAME == "reference"


def test_noncontiguous_input_falls_back_and_matches():
    x = torch.randn(6, 4, 10)[:, :, ::2]
    with_numba = BF.batch_norm(x, None, None, training=True)
    torch.testing.assert_close(with_numba, TF.batch_norm(x, None, None, training=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,fmt", [((6, 3), None), ((4, 3, 5), None), ((3, 2, 3, 4), None),
                                       ((3, 2, 3, 4), torch.channels_last), ((2, 2, 2, 3, 2), torch.channels_last_3d)],
                         ids=str)
def test_gradcheck_float64_through_numba(shape, fmt):
    x, w, b = _make(shape, fmt, torch.float64)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    bnlab.set_backend("numba")
    try:
        assert select(x).NAME == "numba"
        train = lambda x, w, b: BF.batch_norm(x, None, None, w, b, training=True)  # noqa: E731
        assert gradcheck(train, (x, w, b), eps=1e-6, atol=1e-6)
        assert gradgradcheck(train, (x, w, b), eps=1e-6, atol=1e-5)
        rm, rv = torch.randn(shape[1], dtype=torch.float64), torch.rand(shape[1], dtype=torch.float64) + 0.5
        ev = lambda x, w, b: BF.batch_norm(x, rm, rv, w, b, training=False)  # noqa: E731
        assert gradcheck(ev, (x, w, b), eps=1e-6, atol=1e-6)
    finally:
        bnlab.set_backend("auto")


@pytest.mark.parametrize("fmt", [None, torch.channels_last], ids=str)
def test_module_step_matches_torch(fmt):
    """A training step of bnlab.BatchNorm2d on the fused kernels = torch.nn.BatchNorm2d (outputs, grads, buffers)."""
    x = torch.randn(8, 5, 6, 7)
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    ours, theirs = bnlab.BatchNorm2d(5), torch.nn.BatchNorm2d(5)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    ya.sum().backward()                                      # expanded (stride-0) gradient
    yb.sum().backward()
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
