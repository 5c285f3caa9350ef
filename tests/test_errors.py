"""Bad input gets a clear error of PyTorch's exception type, and a call that raises changes no state.

Oracle: ``torch.nn.BatchNorm*d`` / ``torch.nn.functional.batch_norm`` on the same call. bnlab's
exception must be an instance of the type PyTorch raises *and* of the Python type a plain
argument check would raise (``bnlab.errors`` classes inherit from both).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
import torch.nn.functional as TF

import bnlab
from bnlab import functional as BF


def snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def assert_unchanged(m, before):
    after = m.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


# (layer name, constructor kwargs, input, Python type, message pattern)
CASES = [
    ("BatchNorm2d", {}, torch.randn(2, 3, 4), ValueError, r"expected 4D input \(got 3D input\)"),
    ("BatchNorm1d", {}, torch.randn(2, 3, 4, 4), ValueError, r"expected 2D or 3D input \(got 4D input\)"),
    ("BatchNorm3d", {}, torch.randn(2, 3, 4, 4), ValueError, r"expected 5D input \(got 4D input\)"),
    ("BatchNorm2d", {}, torch.randn(2, 4, 3, 3), ValueError, r"running_mean should contain 4 elements not 3"),
    ("BatchNorm2d", {}, torch.randn(1, 3, 1, 1), ValueError, r"Expected more than 1 value per channel when training"),
    ("BatchNorm1d", {}, torch.randn(1, 3), ValueError, r"Expected more than 1 value per channel when training"),
    ("BatchNorm2d", {}, torch.randint(0, 5, (2, 3, 2, 2)), TypeError, r"floating-point input.*int64"),
    ("BatchNorm2d", {}, torch.randn(2, 3, 2, 2, dtype=torch.complex64), TypeError, r"floating-point input.*complex"),
    ("BatchNorm2d", {}, torch.randn(2, 3, 2, 2, dtype=torch.float64), TypeError,
     r"mixed dtype.*has dtype torch.float32 but the input has dtype torch.float64"),
    ("BatchNorm2d", dict(dtype=torch.float64), torch.randn(2, 3, 2, 2).half(), TypeError,
     r"float64 but the input has dtype torch.float16"),
    ("BatchNorm2d", dict(eps=0.0), torch.randn(2, 3, 2, 2), ValueError, r"eps must be positive during training"),
    ("BatchNorm2d", dict(eps=-1.0), torch.randn(2, 3, 2, 2), ValueError, r"eps must be positive during training"),
    ("BatchNorm2d", {}, [[1.0]], TypeError, r"expected a torch.Tensor"),
]


def _torch_error(name, kwargs, x):
    try:
        getattr(nn, name)(3, **kwargs)(x)
    except Exception as err:  # noqa: BLE001 - the oracle's type is what we compare with
        return type(err)
    raise AssertionError("torch accepted the call")


@pytest.mark.parametrize("name,kwargs,x,pytype,pattern", CASES)
def test_bad_input_raises_torch_type_clearly_and_changes_nothing(name, kwargs, x, pytype, pattern):
    module = getattr(bnlab, name)(3, **kwargs).train()
    before = snapshot(module)
    with pytest.raises(_torch_error(name, kwargs, x), match=pattern) as info:
        module(x)
    assert isinstance(info.value, pytype)
    assert_unchanged(module, before)


def test_eps_is_checked_at_forward_as_torch_does():
    """eps=-1 and eps=0 construct (torch does); eval accepts eps=0 and refuses eps<0."""
    for eps in (-1.0, 0.0):
        ours, theirs = bnlab.BatchNorm2d(3, eps=eps).eval(), nn.BatchNorm2d(3, eps=eps).eval()
        x = torch.rand(2, 3, 2, 2) + 0.5
        if eps == 0.0:
            torch.testing.assert_close(ours(x), theirs(x))
        else:
            with pytest.raises(ValueError, match="eps must be non-negative"):
                theirs(x)
            with pytest.raises(ValueError, match="eps must be non-negative"):
                ours(x)


def test_mismatched_device_meta():
    """A parameter on another device is named in the error (meta stands in for a GPU)."""
    m = bnlab.BatchNorm2d(3)
    x = torch.randn(2, 3, 2, 2, device="meta")
    with pytest.raises(RuntimeError, match="is on cpu but the input is on meta"):
        m(x)


def test_one_value_per_channel_is_fine_in_eval():
    m = bnlab.BatchNorm2d(3).eval()
    assert m(torch.randn(1, 3, 1, 1)).shape == (1, 3, 1, 1)


FUNCTIONAL = [
    (lambda F, x: F.batch_norm(x, None, None, training=False), ValueError, "must be defined in evaluation mode"),
    (lambda F, x: F.batch_norm(x, torch.zeros(3), None, training=True), ValueError, "both be None or neither"),
    (lambda F, x: F.batch_norm(torch.randn(4), None, None, training=True), ValueError, None),
    (lambda F, x: F.batch_norm(x, None, None, None, torch.zeros(2), training=True), ValueError,
     "bias should contain 3 elements not 2"),
    (lambda F, x: F.batch_norm(x, torch.zeros(2), torch.ones(2), training=True), ValueError,
     "running_mean should contain 3 elements not 2"),
    (lambda F, x: F.batch_norm(x, torch.zeros(3), torch.ones(3), torch.ones(2), training=False), ValueError,
     "weight should contain 3 elements not 2"),
    (lambda F, x: F.batch_norm(x, None, None, training=True, eps=0.0), ValueError, "eps must be positive"),
]


@pytest.mark.parametrize("call,pytype,pattern", FUNCTIONAL)
def test_functional_errors_match_torch(call, pytype, pattern):
    x = torch.randn(4, 3)
    with pytest.raises(Exception) as theirs:
        call(TF, x)
    with pytest.raises(type(theirs.value), match=pattern) as ours:
        call(BF, x)
    assert isinstance(ours.value, pytype)


def test_constructor_accepts_what_torch_accepts():
    """Construction validates nothing torch does not (eps and momentum are checked, if at all, at use)."""
    for kwargs in (dict(eps=-1.0), dict(eps=0.0), dict(momentum=1.5), dict(momentum=None)):
        for name in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"):
            ours, theirs = getattr(bnlab, name)(3, **kwargs), getattr(nn, name)(3, **kwargs)
            assert (ours.eps, ours.momentum) == (theirs.eps, theirs.momentum)


def test_empty_batch_with_mixed_dtypes_returns_empty_like_torch():
    """An empty float64 batch through float32 parameters: torch returns an empty output, so does bnlab."""
    for training in (True, False):
        ours, theirs = bnlab.BatchNorm2d(3).train(training), nn.BatchNorm2d(3).train(training)
        x = torch.randn(0, 3, 2, 2, dtype=torch.float64, requires_grad=True)
        y, expect = ours(x), theirs(x)
        assert y.shape == expect.shape and y.dtype == expect.dtype
        y.sum().backward()
        assert x.grad.shape == x.shape
        assert torch.equal(ours.running_mean, theirs.running_mean)
        assert torch.equal(ours.num_batches_tracked, theirs.num_batches_tracked)
