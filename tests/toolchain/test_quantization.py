"""Eager-mode quantization's fuse_modules with bnlab layers: via convert_model(to="torch") or fold_batchnorm.

``torch.ao.quantization.fuse_modules`` looks its fusions up by exact class (``(Conv2d,
BatchNorm2d, ReLU)``), so bnlab's subclass is not in its table: convert the BN layers
back to torch's (or fold them into the convolutions) first. Oracle: the eval-mode model.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.ao.quantization import fuse_modules

import bnlab
from toolchain_models import randomize


def _model():
    torch.manual_seed(0)
    return randomize(nn.Sequential(nn.Conv2d(3, 4, 3), bnlab.BatchNorm2d(4), nn.ReLU())).eval()


def test_fuse_modules_needs_torch_classes():
    with pytest.raises(Exception):                                  # not in the fuser's table
        fuse_modules(_model(), [["0", "1", "2"]])


def test_convert_to_torch_then_fuse():
    model = _model()
    x = torch.randn(2, 3, 6, 6)
    fused = fuse_modules(bnlab.convert_model(model, to="torch"), [["0", "1", "2"]])
    assert type(fused[0]).__name__ == "ConvReLU2d"
    torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)


def test_fold_then_fuse_conv_relu():
    model = _model()
    x = torch.randn(2, 3, 6, 6)
    folded = bnlab.fold_batchnorm(model)
    fused = fuse_modules(folded, [["0", "2"]])
    assert type(fused[0]).__name__ == "ConvReLU2d"
    torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
