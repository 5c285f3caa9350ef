"""The autograd Functions: closed-form gradients, double backward, saved tensors."""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import bnlab
from bnlab import functional as BF

SHAPES = [(6, 3), (4, 3, 5), (3, 2, 3, 4), (2, 2, 2, 3, 2)]


def _inputs(shape, weight=True, bias=True):
    c = shape[1]
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 1).requires_grad_()
    w = (torch.rand(c, dtype=torch.float64) + 0.5).requires_grad_() if weight else None
    b = torch.randn(c, dtype=torch.float64).requires_grad_() if bias else None
    return x, w, b


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("affine", [(True, True), (True, False), (False, False), (False, True)], ids=str)
def test_gradcheck_training(shape, affine, backend):
    x, w, b = _inputs(shape, *affine)
    fn = lambda *a: BF.batch_norm(a[0], None, None, *a[1:], training=True)  # noqa: E731
    args = tuple(t for t in (x, w, b))
    assert gradcheck(fn, args, eps=1e-6, atol=1e-6)
    assert gradgradcheck(fn, args, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gradcheck_eval(shape, backend):
    x, w, b = _inputs(shape)
    c = shape[1]
    rm = torch.randn(c, dtype=torch.float64)
    rv = torch.rand(c, dtype=torch.float64) + 0.5
    fn = lambda x, w, b: BF.batch_norm(x, rm, rv, w, b, training=False)  # noqa: E731
    assert gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-6)
    assert gradgradcheck(fn, (x, w, b), eps=1e-6, atol=1e-5)


def test_gradcheck_channels_last(backend):
    x = torch.randn(3, 4, 3, 2, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(4, dtype=torch.float64).requires_grad_()
    assert gradcheck(lambda *a: BF.batch_norm(a[0], None, None, *a[1:], training=True), (x, w, b))


def test_eval_statistics_are_constants():
    """In eval mode no gradient reaches the running statistics, even if they ask for one."""
    x, w, b = _inputs((4, 3))
    rm = torch.randn(3, dtype=torch.float64, requires_grad=True)
    rv = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    BF.batch_norm(x, rm, rv, w, b, training=False).sum().backward()
    assert rm.grad is None and rv.grad is None
    assert x.grad is not None and w.grad is not None


class _RecordBnlabOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every bnlab operator call that reaches the kernels, with its arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name.startswith("bnlab::"):
            self.calls.append((func._schema.name, args))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True), (True, True, True)])
def test_needs_input_grad(needs, backend):
    """Only the requested gradients are computed (the backward operator's mask) and returned."""
    x = torch.randn(5, 3, 4, requires_grad=needs[0])
    w = torch.rand(3, requires_grad=needs[1])
    b = torch.randn(3, requires_grad=needs[2])
    y = BF.batch_norm(x, None, None, w, b, training=True)
    with _RecordBnlabOps() as rec:
        y.sum().backward()
    masks = [tuple(args[-1]) for name, args in rec.calls if name == "bnlab::bn_backward"]
    assert masks == [needs]
    for t, need in zip((x, w, b), needs):
        assert (t.grad is not None) == need


def test_saved_tensors_are_input_plus_per_channel():
    """Backward keeps the input and O(C) vectors only (not x̂ or other input-sized tensors)."""
    x = torch.randn(8, 16, 10, 10, requires_grad=True)
    m = bnlab.BatchNorm2d(16)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x)
    big = [t for t in saved if t.numel() > 16]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()
    assert sum(t.numel() for t in saved if t.numel() <= 16) <= 4 * 16


def test_closed_form_matches_autograd_of_the_definition():
    """Section 3's gradient equals autograd through the plain definition (float64)."""
    x, w, b = _inputs((7, 4, 3))
    dy = torch.randn(7, 4, 3, dtype=torch.float64)
    y = BF.batch_norm(x, None, None, w, b, training=True)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), dy)
    mu = x.mean(dim=(0, 2), keepdim=True)
    var = ((x - mu) ** 2).mean(dim=(0, 2), keepdim=True)
    y_ref = (x - mu) / torch.sqrt(var + 1e-5) * w.view(1, -1, 1) + b.view(1, -1, 1)
    rx, rw, rb = torch.autograd.grad(y_ref, (x, w, b), dy)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    torch.testing.assert_close(gb, rb)
