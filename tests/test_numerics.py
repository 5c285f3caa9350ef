"""Numerics: accumulation precision, offsets, half types, memory formats."""
from __future__ import annotations

import pytest
import torch

import bnlab
from bnlab import functional as BF
from bnlab._stats import channel_mean_var, merge_mean_m2
from conftest import tolerances


def test_large_offset_variance_float32(backend):
    """float32 input 1e4 + N(0, 1), 1e5 values per channel: variance within 1e-3 of the truth."""
    g = torch.Generator().manual_seed(1)
    truth64 = 1e4 + torch.randn(10, 3, 100, 100, dtype=torch.float64, generator=g)   # 1e5 per channel
    x = truth64.float()
    exact = x.double().var(dim=(0, 2, 3), unbiased=True)      # float64 truth of the float32 data
    m = bnlab.BatchNorm2d(3, momentum=1.0)                      # running_var = this batch's estimate
    y = m(x)
    rel = ((m.running_var.double() - exact) / exact).abs().max().item()
    assert rel < 1e-3, rel
    # and the output is normalized: unit variance, zero mean
    assert y.double().mean(dim=(0, 2, 3)).abs().max() < 1e-2
    assert (y.double().var(dim=(0, 2, 3)) - 1).abs().max() < 1e-2


def test_naive_formula_would_fail_the_offset_test():
    """The oracle has teeth: E[x²] − E[x]² in float32 misses the variance by far more than 1e-3."""
    x = (1e4 + torch.randn(10, 3, 100, 100, dtype=torch.float64)).float()
    naive = (x * x).mean(dim=(0, 2, 3)) - x.mean(dim=(0, 2, 3)) ** 2
    exact = x.double().var(dim=(0, 2, 3), unbiased=False)
    assert ((naive.double() - exact) / exact).abs().max() > 1e-3


def test_channel_mean_var_matches_float64():
    x = (torch.randn(5, 4, 7, 3, dtype=torch.float64) * 3 - 2)
    mean, var = channel_mean_var(x)
    torch.testing.assert_close(mean, x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(var, x.var(dim=(0, 2, 3), unbiased=False))


def test_chan_merge_equals_pooled():
    x = torch.randn(11, 3, dtype=torch.float64) * 5 + 7
    parts = [x[:4], x[4:4], x[4:]]          # includes an empty part
    n = torch.zeros(3, dtype=torch.float64)
    mu = torch.zeros(3, dtype=torch.float64)
    m2 = torch.zeros(3, dtype=torch.float64)
    for p in parts:
        cnt = torch.full((3,), float(p.shape[0]), dtype=torch.float64)
        pm = p.mean(0) if p.shape[0] else torch.zeros(3, dtype=torch.float64)
        pm2 = ((p - pm) ** 2).sum(0) if p.shape[0] else torch.zeros(3, dtype=torch.float64)
        n, mu, m2 = merge_mean_m2(n, mu, m2, cnt, pm, pm2)
    torch.testing.assert_close(mu, x.mean(0))
    torch.testing.assert_close(m2 / n, x.var(0, unbiased=False))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_input_accuracy_vs_float64(dtype, backend):
    """Half input: the output is as close to the float64 result as the dtype allows."""
    x = (torch.randn(16, 8, 6, 6) * 3 + 5).to(dtype)
    y = BF.batch_norm(x, None, None, training=True)
    ref = BF.batch_norm(x.double(), None, None, training=True)
    assert y.dtype == dtype
    err = (y.double() - ref).abs().max().item()
    assert err <= 4 * torch.finfo(dtype).eps * ref.abs().max().item()


@pytest.mark.parametrize("fmt,shape", [(torch.channels_last, (2, 3, 4, 5)), (torch.channels_last_3d, (2, 3, 2, 4, 5))])
def test_channels_last_in_channels_last_out(fmt, shape, backend):
    x = torch.randn(shape).contiguous(memory_format=fmt).requires_grad_()
    m = bnlab.BatchNorm2d(3) if len(shape) == 4 else bnlab.BatchNorm3d(3)
    y = m(x)
    assert y.is_contiguous(memory_format=fmt)
    y.backward(torch.randn_like(y))
    assert x.grad.is_contiguous(memory_format=fmt)


def test_non_contiguous_input(backend):
    """A strided view (e.g. a transposed tensor) works and matches the contiguous result."""
    base = torch.randn(5, 6, 4)
    x = base.transpose(0, 2).transpose(1, 2)[:, :, ::1]   # (4, 5, 6)-shaped... as (N, C, L)
    x = x.permute(0, 1, 2)
    assert not x.is_contiguous()
    y = BF.batch_norm(x, None, None, training=True)
    torch.testing.assert_close(y, BF.batch_norm(x.contiguous(), None, None, training=True))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["BatchNorm1d", "GhostBatchNorm1d"])
def test_half_buffers_updated_without_overflow_like_torch(name, dtype):
    """Finite batch whose variance (90000) does not fit float16: torch's running_var is 12000, so is bnlab's.

    The guard's promise holds: the statistics are finite (they are kept in float32/64), so
    the batch is folded in, not skipped.
    """
    ours, theirs = getattr(bnlab, name)(1, dtype=dtype), torch.nn.BatchNorm1d(1, dtype=dtype)
    x = torch.tensor([[-300.0], [300.0], [-300.0], [300.0]], dtype=dtype)
    torch.testing.assert_close(ours(x), theirs(x), **tolerances(dtype))
    assert torch.equal(ours.running_var, theirs.running_var) and torch.isfinite(ours.running_var).all()
    assert torch.equal(ours.running_mean, theirs.running_mean)
    assert ours.skipped_batches == 0 and int(ours.num_batches_tracked) == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_guard_promise_on_finite_half_batches(dtype):
    """Many finite half-precision batches: nothing skipped, buffers equal torch's step after step."""
    ours, theirs = bnlab.BatchNorm2d(3, dtype=dtype), torch.nn.BatchNorm2d(3, dtype=dtype)
    g = torch.Generator().manual_seed(3)
    for scale in (1.0, 3.0, 10.0, 30.0, 100.0):                    # variances up to ~1e4 fit float16
        x = (torch.randn(4, 3, 2, 2, generator=g) * scale + scale).to(dtype)
        ours(x), theirs(x)
        torch.testing.assert_close(ours.running_mean, theirs.running_mean, **tolerances(dtype))
        torch.testing.assert_close(ours.running_var, theirs.running_var, **tolerances(dtype))
    assert ours.skipped_batches == 0


def test_a_transform_call_does_not_switch_the_fast_path_off():
    """One call under vmap takes the composite path for that call only; later eager calls do not."""
    from bnlab import kernels as K

    layer = bnlab.BatchNorm2d(3, track_running_stats=False)
    x = torch.randn(2, 4, 3, 2, 2)
    layer(x[0])
    K.reset_path_counts()
    torch.func.vmap(layer)(x)
    after_vmap = K.path_counts()
    assert after_vmap.get(("composite", "functorch"), 0) >= 1
    layer(x[0])
    eager = {k: v for k, v in K.path_counts().items() if k[0] != "composite"}
    assert sum(eager.values()) == 1, K.path_counts()               # the eager call: compiled or reference, counted
    expected = "reference" if bnlab.get_backend() == "reference" else ("compiled" if "compiled" in bnlab.available_backends() else "reference")
    assert next(iter(eager))[0] == expected
