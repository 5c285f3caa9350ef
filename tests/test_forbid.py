"""The guard used by the parity grid really stops PyTorch's batch norm (so the grid means something)."""
from __future__ import annotations

import pytest
import torch

from conftest import forbid_torch_batchnorm


@pytest.mark.parametrize("call", [
    lambda x: torch.nn.BatchNorm2d(3)(x),
    lambda x: torch.nn.functional.batch_norm(x, None, None, training=True),
    lambda x: torch.batch_norm(x, None, None, None, None, True, 0.1, 1e-5, False),
    lambda x: torch.ops.aten.native_batch_norm(x, None, None, None, None, True, 0.1, 1e-5),
    lambda x: torch.ops.aten._native_batch_norm_legit_no_training(x, None, None, torch.zeros(3), torch.ones(3), 0.1, 1e-5),
    lambda x: torch.nn.functional.instance_norm(x),
])
def test_forbid_catches_every_entry_point(call):
    x = torch.randn(2, 3, 4, 4)
    with forbid_torch_batchnorm():
        with pytest.raises(AssertionError, match="bnlab called"):
            call(x)
    call(x)   # and outside the block it works again
