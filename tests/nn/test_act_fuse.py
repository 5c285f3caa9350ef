"""fuse_bn_act: BN → activation pairs in nn.Sequential become BatchNormAct, numbers unchanged."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import bnlab
from bnlab.nn.act import BatchNormAct1d, BatchNormAct2d
from bnlab.surgery.fuse_act import fuse_bn_act


def _net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.LeakyReLU(0.2),
        nn.Sequential(nn.Conv2d(8, 8, 1), bnlab.BatchNorm2d(8), nn.SiLU()),
        nn.BatchNorm2d(8), nn.Tanh(),                                # not a fusable activation
        nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.BatchNorm1d(16), nn.ReLU(),
    )


def _warm(model, x):
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(x)                                                 # running statistics move


def test_fused_model_computes_the_same():
    torch.manual_seed(0)
    ref = _net().double()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    _warm(ref, x)
    keys = list(ref.state_dict())
    ours, n = fuse_bn_act(ref, return_count=True)
    assert n == 4 and type(ref[1]) is nn.BatchNorm2d                # a copy was fused
    assert list(ours.state_dict()) == keys                           # no key moved
    assert isinstance(ours[1], BatchNormAct2d) and type(ours[2]) is nn.Identity
    assert ours[4].act.negative_slope == 0.2 and isinstance(ours[6][2], nn.Identity)
    assert isinstance(ours[11], BatchNormAct1d) and type(ours[7]) is nn.BatchNorm2d
    for mode in ("train", "eval"):
        getattr(ref, mode)(), getattr(ours, mode)()
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), ref(xb)
        ya.sum().backward(), yb.sum().backward()
        torch.testing.assert_close(ya, yb)
        torch.testing.assert_close(xa.grad, xb.grad)
        for (k, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
            torch.testing.assert_close(a, b, msg=k)


def test_inplace_only_where_safe():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.LeakyReLU(0.1),    # after a conv, invertible: in place
        nn.BatchNorm2d(4), nn.LeakyReLU(0.1),                        # its input is another layer's output: not
        nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU(),            # relu is not invertible: not
    )
    ref = copy.deepcopy(model)
    assert fuse_bn_act(model, inplace=True, inplace_abn=True, return_count=True) == (model, 3)
    assert [model[i].inplace for i in (1, 3, 6)] == [True, False, False]
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(model(x), ref(x))


def test_only_listed_acts_and_exact_classes():
    model = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), bnlab.GhostBatchNorm2d(4), nn.ReLU(),
                          nn.BatchNorm2d(4), nn.SiLU())
    assert fuse_bn_act(model, acts=("silu",), inplace=True) is model
    assert type(model[0]) is nn.BatchNorm2d and isinstance(model[4], BatchNormAct2d)
    assert type(model[2]) is bnlab.GhostBatchNorm2d                 # variants keep their own math


def test_errors():
    with pytest.raises(ValueError, match="cannot fuse \\['gelu'\\]"):
        fuse_bn_act(nn.Sequential(), acts=("gelu",))
    with pytest.raises(TypeError, match="expected an nn.Module"):
        fuse_bn_act("model")
