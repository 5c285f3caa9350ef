"""Outputs of 24 MiB and more come from bnlab's huge-page mapping (csrc/bn_alloc.h).

Oracle: the same op on a small slice (torch's allocator) and torch's own batch norm;
the tensors behave as any CPU tensor (strides, resize, inference mode, autograd).
"""
from __future__ import annotations

import pytest
import torch

import bnlab
from bnlab.kernels import OPS

MIB = 1 << 20
SHAPE = (8, 16, 256, 256)                                           # 8M floats = 32 MiB


def _compiled():
    if "compiled" not in bnlab.kernels.available_backends():
        pytest.skip("the compiled kernels are not available here")


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
def test_large_outputs_are_2mib_aligned_and_right(fmt):
    _compiled()
    x = torch.randn(SHAPE).contiguous(memory_format=fmt)
    c = SHAPE[1]
    rm, rv, w, b = torch.randn(c), torch.rand(c) + 0.5, torch.rand(c), torch.randn(c)
    y = OPS.bn_eval(x, rm, rv, w, b, 1e-5, "identity", 0.0)
    assert y.data_ptr() % (2 * MIB) == 0
    assert y.is_contiguous(memory_format=fmt)
    ref = torch.nn.functional.batch_norm(x[:1], rm, rv, w, b, False, 0.1, 1e-5)
    torch.testing.assert_close(y[:1], ref)
    small = OPS.bn_eval(x[:1].contiguous(memory_format=fmt), rm, rv, w, b, 1e-5, "identity", 0.0)
    assert small.data_ptr() % (2 * MIB) != 0 or small.numel() * 4 < 32 * MIB
    y.resize_(2 * x.numel())                                        # a resizable storage, as torch's
    y.fill_(1.0)
    assert float(y.sum()) == 2 * x.numel()


def test_large_training_step_gradients_and_inference_mode():
    _compiled()
    x = torch.randn(SHAPE, requires_grad=True)
    layer = bnlab.BatchNorm2d(SHAPE[1])
    y = layer(x)
    assert y.data_ptr() % (2 * MIB) == 0
    y.backward(torch.ones_like(y))
    assert x.grad.data_ptr() % (2 * MIB) == 0
    assert float(x.grad.abs().max()) < 1e-3                          # dL/dx = 0 for L = Σ y (per channel)
    layer.eval()
    with torch.inference_mode():
        z = layer(x.detach())
    assert z.is_inference() and z.data_ptr() % (2 * MIB) == 0


def _minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
def test_a_freed_large_output_is_reused_without_new_faults(fmt):
    """A freed 32 MiB output's mapping is kept and served again: the next call writes pages that
    are already faulted in (none of torch's fresh-mapping faults), over stale contents, and is right."""
    _compiled()
    x = torch.randn(SHAPE).contiguous(memory_format=fmt)
    c = SHAPE[1]
    rm, rv, w, b = torch.randn(c), torch.rand(c) + 0.5, torch.rand(c), torch.randn(c)
    ref = torch.nn.functional.batch_norm(x, rm, rv, w, b, False, 0.1, 1e-5)
    y = OPS.bn_eval(x, rm, rv, w, b, 1e-5, "identity", 0.0)
    y.fill_(float("nan"))                                            # stale contents for the next user
    del y
    f0 = _minor_faults()
    z = OPS.bn_eval(x, rm, rv, w, b, 1e-5, "identity", 0.0)
    faults = _minor_faults() - f0
    assert z.data_ptr() % (2 * MIB) == 0
    assert faults < 64, f"{faults} page faults writing a reused 32 MiB output (a fresh one: >= 16)"
    torch.testing.assert_close(z, ref)


def test_cache_budget_zero_maps_afresh_each_time():
    """BNLAB_HUGEPAGE_CACHE_MB=0: every large output is a fresh mapping (faulted in on first write)."""
    _compiled()
    import os
    import subprocess
    import sys

    code = (
        "import resource, torch, bnlab\n"
        "from bnlab.kernels import OPS\n"
        f"x = torch.randn({SHAPE}); c = {SHAPE[1]}\n"
        "args = (torch.zeros(c), torch.ones(c), None, None, 1e-5, 'identity', 0.0)\n"
        "OPS.bn_eval(x, *args)\n"
        "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "y = OPS.bn_eval(x, *args)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
    )
    env = dict(os.environ, BNLAB_HUGEPAGE_CACHE_MB="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) >= 16           # 32 MiB / 2 MiB pages at the least


@pytest.mark.parametrize("dtype,shape", [(torch.float32, (8, 16, 224, 224)), (torch.float64, (4, 16, 224, 224))],
                         ids=["float32", "float64"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
def test_outputs_past_the_streaming_threshold_match_torch(dtype, shape, fmt):
    """Outputs of 24 MiB and more are written with streaming stores (csrc/bn_common.h) on bnlab's
    huge-page mappings (2 MiB-aligned): y, dx, and eval's y equal torch's batch norm and its
    autograd gradients (the oracle)."""
    _compiled()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=dtype, generator=g).contiguous(memory_format=fmt)
    assert x.numel() * x.element_size() >= 24 * MIB
    c = shape[1]
    w, b = torch.rand(c, dtype=dtype, generator=g) + 0.5, torch.randn(c, dtype=dtype, generator=g)
    dy = torch.randn(shape, dtype=dtype, generator=g).contiguous(memory_format=fmt)
    tol = {} if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    out = {}
    for name, fn in (("bnlab", None), ("torch", torch.nn.functional.batch_norm)):
        xi = x.clone().requires_grad_()
        rm, rv = torch.zeros(c, dtype=dtype), torch.ones(c, dtype=dtype)
        if fn is None:
            y, *_ = OPS.bn_train(xi, w, b, rm, rv, None, 0.1, 1e-5, True, "identity", 0.0)
            ev = OPS.bn_eval(x, rm, rv, w, b, 1e-5, "identity", 0.0)
        else:
            y = fn(xi, rm, rv, w, b, True, 0.1, 1e-5)
            ev = fn(x, rm, rv, w, b, False, 0.1, 1e-5)
        y.backward(dy)
        out[name] = (y.detach(), xi.grad, ev)
    for got, want in zip(out["bnlab"], out["torch"]):
        assert got.is_contiguous(memory_format=fmt) and got.data_ptr() % (2 * MIB) == 0
        torch.testing.assert_close(got, want, **tol)
