"""Bad input gets a clear error, and a call that raises changes no state."""
from __future__ import annotations

import pytest
import torch

import bnlab
from bnlab import functional as BF


def snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def assert_unchanged(m, before):
    after = m.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


CASES = [
    (bnlab.BatchNorm2d(3), torch.randn(2, 3, 4), ValueError, r"expected 4D input \(got 3D input\)"),
    (bnlab.BatchNorm1d(3), torch.randn(2, 3, 4, 4), ValueError, r"expected 2D or 3D input \(got 4D input\)"),
    (bnlab.BatchNorm3d(3), torch.randn(2, 3, 4, 4), ValueError, r"expected 5D input \(got 4D input\)"),
    (bnlab.BatchNorm2d(3), torch.randn(2, 4, 3, 3), ValueError, r"should contain 4 elements not 3"),
    (bnlab.BatchNorm2d(3), torch.randn(1, 3, 1, 1), ValueError, r"Expected more than 1 value per channel when training"),
    (bnlab.BatchNorm1d(3), torch.randn(1, 3), ValueError, r"Expected more than 1 value per channel when training"),
    (bnlab.BatchNorm2d(3), torch.randint(0, 5, (2, 3, 2, 2)), TypeError, r"floating-point input.*int64"),
    (bnlab.BatchNorm2d(3), torch.randn(2, 3, 2, 2, dtype=torch.complex64), TypeError, r"floating-point input.*complex"),
    (bnlab.BatchNorm2d(3), torch.randn(2, 3, 2, 2, dtype=torch.float64), TypeError, r"has dtype torch.float32 but the input has dtype torch.float64"),
    (bnlab.BatchNorm2d(3, dtype=torch.float64), torch.randn(2, 3, 2, 2).half(), TypeError, r"float64 but the input has dtype torch.float16"),
    (bnlab.BatchNorm2d(3), [[1.0]], TypeError, r"expected a torch.Tensor"),
]


@pytest.mark.parametrize("module,x,exc,pattern", CASES)
def test_bad_input_raises_clearly_and_changes_nothing(module, x, exc, pattern):
    module.train()
    before = snapshot(module)
    with pytest.raises(exc, match=pattern):
        module(x)
    assert_unchanged(module, before)


def test_mismatched_device_meta():
    """A parameter on another device is named in the error (meta stands in for a GPU)."""
    m = bnlab.BatchNorm2d(3)
    x = torch.randn(2, 3, 2, 2, device="meta")
    with pytest.raises(RuntimeError, match="is on cpu but the input is on meta"):
        m(x)


def test_one_value_per_channel_is_fine_in_eval():
    m = bnlab.BatchNorm2d(3).eval()
    assert m(torch.randn(1, 3, 1, 1)).shape == (1, 3, 1, 1)


def test_functional_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="must be defined in evaluation mode"):
        BF.batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match="given together"):
        BF.batch_norm(x, torch.zeros(3), None, training=True)
    with pytest.raises(ValueError, match="at least 2D"):
        BF.batch_norm(torch.randn(4), None, None, training=True)
    with pytest.raises(ValueError, match="bias should contain 3 elements not 2"):
        BF.batch_norm(x, None, None, None, torch.zeros(2), training=True)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(num_features=0), "num_features"),
    (dict(num_features=3, momentum=1.5), "momentum"),
    (dict(num_features=3, eps=-1.0), "eps"),
])
def test_constructor_validation(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        bnlab.BatchNorm2d(**kwargs)
