"""The harness itself: under each binding, torch's batch-norm names resolve to the implementation under test.

Without this, a broken binding would make every ``[bnlab]`` test silently re-run PyTorch.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bnlab
from peer_binding import TORCH, binding  # noqa: F401 (the autouse fixture)


def test_names_are_bound(binding):
    expected = TORCH["BatchNorm2d"] if binding == "torch" else bnlab.BatchNorm2d
    assert torch.nn.BatchNorm2d is expected
    assert torch.nn.modules.batchnorm.BatchNorm2d is expected
    assert torch.nn.modules.BatchNorm2d is expected
    assert (F.batch_norm is bnlab.functional.batch_norm) == (binding != "torch")
    assert (torch.nn.SyncBatchNorm is bnlab.SyncBatchNorm) == (binding != "torch")
    assert bnlab.get_backend() == "reference" if binding == "bnlab_ref" else True
    # the classes themselves are untouched: bnlab's still subclass torch's
    assert issubclass(bnlab.BatchNorm2d, TORCH["BatchNorm2d"])


def test_torch_kernels_refused_under_bnlab(binding):
    x = torch.randn(4, 3, 2, 2)
    if binding != "torch":
        with pytest.raises(AssertionError, match="reached PyTorch's aten::"):
            torch.ops.aten.native_batch_norm(x, None, None, None, None, True, 0.1, 1e-5)
    else:
        torch.ops.aten.native_batch_norm(x, None, None, None, None, True, 0.1, 1e-5)


def test_torch_batch_norm_positional_binding(binding):
    """torch.batch_norm's positional order (input, weight, bias, mean, var, training, momentum, eps, cudnn)."""
    x = torch.randn(6, 3, 4)
    rm, rv = torch.zeros(3), torch.ones(3)
    w, b = torch.rand(3) + 0.5, torch.randn(3)
    y = torch.batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5, False)
    mean = x.mean((0, 2), keepdim=True)
    var = x.var((0, 2), unbiased=False, keepdim=True)
    torch.testing.assert_close(y, (x - mean) / torch.sqrt(var + 1e-5) * w[:, None] + b[:, None])
    torch.testing.assert_close(rm, 0.1 * x.mean((0, 2)))
