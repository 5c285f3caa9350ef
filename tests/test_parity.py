"""Parity grid: bnlab.BatchNorm*d against torch.nn.BatchNorm*d.

Each case runs several training steps (forward, backward with a fixed upstream
gradient) and then eval-mode forward/backward, comparing outputs, input and
parameter gradients, every buffer and ``num_batches_tracked``. bnlab runs under
``forbid_torch_batchnorm``: PyTorch's batch-norm kernels cannot be used.
The grid runs once per kernel backend (the ``backend`` fixture).
"""
from __future__ import annotations

import pytest
import torch

import bnlab
from conftest import forbid_torch_batchnorm, tolerances

# (input shape, memory format)
LAYOUTS = [
    ((8, 3), torch.contiguous_format),
    ((5, 4, 7), torch.contiguous_format),
    ((3, 4, 1), torch.contiguous_format),
    ((2, 3, 4, 5), torch.contiguous_format),
    ((2, 3, 4, 5), torch.channels_last),
    ((3, 5, 1, 1), torch.contiguous_format),
    ((2, 3, 2, 3, 4), torch.contiguous_format),
    ((2, 3, 2, 3, 4), torch.channels_last_3d),
]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
FLAGS = [
    dict(),
    dict(affine=False),
    dict(bias=False),
    dict(track_running_stats=False),
    dict(momentum=None),
    dict(momentum=0.5, eps=1e-3),
    dict(affine=False, track_running_stats=False),
    dict(momentum=None, bias=False),
]
CLASSES = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}


def _layout_id(layout):
    shape, fmt = layout
    return "x".join(map(str, shape)) + ("-cl" if fmt != torch.contiguous_format else "")


def _flags_id(flags):
    return ",".join(f"{k}={v}" for k, v in flags.items()) or "default"


def make_pair(shape, flags, param_dtype):
    name = CLASSES[len(shape)]
    c = shape[1]
    ours = getattr(bnlab, name)(c, dtype=param_dtype, **flags)
    ref = getattr(torch.nn, name)(c, dtype=param_dtype, **flags)
    if ref.weight is not None:
        with torch.no_grad():   # non-trivial γ, β so that they matter in the comparison
            w = torch.rand(c, dtype=param_dtype) + 0.5
            ours.weight.copy_(w)
            ref.weight.copy_(w)
            if ref.bias is not None:
                b = torch.randn(c, dtype=param_dtype)
                ours.bias.copy_(b)
                ref.bias.copy_(b)
    return ours, ref


def run_step(module, x, grad, forbid=False):
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    if forbid:
        with forbid_torch_batchnorm():
            y = module(x)
            y.backward(grad)
    else:
        y = module(x)
        y.backward(grad)
    return y.detach(), x.grad


def assert_same_state(ours, ref, tol):
    for name in ("running_mean", "running_var"):
        a, b = getattr(ours, name), getattr(ref, name)
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, **tol, msg=lambda detail: f"{name}: {detail}")
    if ref.num_batches_tracked is not None:
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked)
    else:
        assert ours.num_batches_tracked is None


def close(a, b, tol, msg):
    """assert_close; for half types the absolute tolerance scales with the tensor's size.

    Half-precision gradients cancel terms of the size of max|dx|, so both libraries
    carry rounding errors proportional to it (bnlab's are the smaller: it accumulates
    in float64/float32).
    """
    if a.dtype in (torch.float16, torch.bfloat16) and b.numel():
        # ten units of the dtype's precision at the tensor's scale
        atol = 10 * torch.finfo(a.dtype).eps * max(1.0, b.abs().max().item())
        tol = dict(rtol=tol["rtol"], atol=max(tol["atol"], atol))
    torch.testing.assert_close(a, b, **tol, msg=lambda detail: f"{msg}: {detail}")


def compare(ours, ref, x, grad, tol):
    y1, gx1 = run_step(ours, x, grad, forbid=True)
    y2, gx2 = run_step(ref, x, grad)
    assert y1.dtype == y2.dtype and y1.shape == y2.shape
    if x.dim() >= 4:
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        assert y1.is_contiguous(memory_format=fmt) == y2.is_contiguous(memory_format=fmt)
    close(y1, y2, tol, "output")
    close(gx1, gx2, tol, "input grad")
    for name in ("weight", "bias"):
        p1, p2 = getattr(ours, name), getattr(ref, name)
        assert (p1 is None) == (p2 is None)
        if p1 is not None:
            close(p1.grad, p2.grad, tol, f"{name} grad")
    assert_same_state(ours, ref, tol)


@pytest.mark.parametrize("flags", FLAGS, ids=_flags_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS, ids=_layout_id)
def test_parity_grid(layout, dtype, flags, backend):
    shape, fmt = layout
    # half-precision input with float32 parameters and statistics (mixed precision)
    param_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    ours, ref = make_pair(shape, flags, param_dtype)
    tol = tolerances(dtype)
    for step in range(3):   # several training steps: running statistics accumulate
        x = (torch.randn(shape, dtype=torch.float64) * (1 + step) + 0.5 * step).to(dtype)
        x = x.contiguous(memory_format=fmt)
        grad = torch.randn(shape, dtype=torch.float64).to(dtype).contiguous(memory_format=fmt)
        compare(ours, ref, x, grad, tol)
    ours.eval()
    ref.eval()
    x = (torch.randn(shape, dtype=torch.float64) + 0.25).to(dtype).contiguous(memory_format=fmt)
    grad = torch.randn(shape, dtype=torch.float64).to(dtype).contiguous(memory_format=fmt)
    compare(ours, ref, x, grad, tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_parameters(dtype, backend):
    """A module converted to half precision as a whole (parameters and buffers)."""
    ours, ref = make_pair((4, 3, 5, 5), {}, torch.float32)
    ours.to(dtype)
    ref.to(dtype)
    for _ in range(2):
        x = torch.randn(4, 3, 5, 5).to(dtype)
        compare(ours, ref, x, torch.randn_like(x), tolerances(dtype))


@pytest.mark.parametrize("training", [True, False])
def test_zero_size_batch(training, backend):
    ours, ref = make_pair((0, 3, 4, 4), {}, torch.float32)
    ours.train(training)
    ref.train(training)
    x = torch.randn(0, 3, 4, 4)
    compare(ours, ref, x, torch.randn_like(x), tolerances(torch.float32))


def test_grid_size():
    assert len(LAYOUTS) * len(DTYPES) * len(FLAGS) >= 200
