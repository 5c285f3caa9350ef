"""FrozenBatchNorm and freeze_batchnorm: oracle = torch BN in eval mode; state_dict both ways."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import bnlab

SHAPES = {1: (5, 3, 4), 2: (4, 3, 2, 2), 3: (2, 3, 2, 2, 2)}
FROZEN = {1: bnlab.FrozenBatchNorm1d, 2: bnlab.FrozenBatchNorm2d, 3: bnlab.FrozenBatchNorm3d}
TORCH = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _trained(cls, c=3):
    bn = cls(c)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c) + 0.5)
        bn.bias.copy_(torch.randn(c))
    for _ in range(3):
        bn(torch.randn(SHAPES[{nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}.get(cls, 2)]) * 2 + 1)
    return bn.eval()


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_frozen_equals_torch_eval_in_train_mode_too(dim):
    tb = _trained(TORCH[dim])
    frozen = FROZEN[dim](3)
    frozen.load_state_dict(tb.state_dict())                         # strict: same keys
    x = torch.randn(SHAPES[dim])
    for mode in (True, False):
        frozen.train(mode)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = frozen(xa), tb(xb)
        torch.testing.assert_close(ya, yb)
        dy = torch.randn_like(ya)
        ya.backward(dy), yb.backward(dy)
        torch.testing.assert_close(xa.grad, xb.grad)
    assert list(frozen.parameters()) == []
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    frozen.train()(torch.randn(SHAPES[dim]) + 100)                    # training-mode forward changes nothing
    for k, v in frozen.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_state_dict_moves_both_ways():
    tb = _trained(nn.BatchNorm2d)
    frozen = bnlab.FrozenBatchNorm2d.from_batchnorm(tb)
    assert list(frozen.state_dict()) == list(tb.state_dict())
    back = nn.BatchNorm2d(3).eval()
    back.load_state_dict(frozen.state_dict())                        # strict
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(back(x), tb(x), rtol=0, atol=0)
    # torchvision's FrozenBatchNorm2d has no num_batches_tracked: still loads strictly
    tv_style = {k: v for k, v in tb.state_dict().items() if k != "num_batches_tracked"}
    f2 = bnlab.FrozenBatchNorm2d(3)
    f2.load_state_dict(tv_style)
    torch.testing.assert_close(f2(x), tb(x))


@pytest.mark.parametrize("kwargs", [dict(affine=False), dict(bias=False)])
def test_from_batchnorm_without_affine(kwargs):
    bn = bnlab.BatchNorm2d(3, **kwargs)
    bn(torch.randn(4, 3, 2, 2) + 2)
    bn.eval()
    frozen = bnlab.FrozenBatchNorm2d.from_batchnorm(bn)
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(frozen(x), bn(x))


def test_freeze_batchnorm_replaces_every_kind():
    model = nn.Sequential(
        nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(),
        nn.Unflatten(1, (6, 1, 1)), bnlab.BatchNorm2d(6),
        nn.Sequential(bnlab.GhostBatchNorm2d(6, virtual_batch_size=2), bnlab.BatchRenorm2d(6, warmup_steps=0, r_max_steps=0, d_max_steps=0)),
        nn.Unflatten(2, (1, 1)), nn.BatchNorm3d(6),
    )
    for _ in range(3):
        model(torch.randn(8, 4) * 2)
    model.eval()
    x = torch.randn(5, 4)
    expect = model(x)
    frozen = bnlab.freeze_batchnorm(model).train()
    kinds = [type(m).__name__ for m in frozen.modules() if "Norm" in type(m).__name__]
    assert kinds == ["FrozenBatchNorm1d"] + ["FrozenBatchNorm2d"] * 3 + ["FrozenBatchNorm3d"]
    torch.testing.assert_close(frozen(x), expect)
    assert [name for name, _ in frozen.named_parameters()] == ["0.weight", "0.bias"]


def test_freeze_root_layer_and_layer_without_stats():
    bn = _trained(nn.BatchNorm1d)
    assert isinstance(bnlab.freeze_batchnorm(bn), bnlab.FrozenBatchNorm1d)
    untracked = nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False))
    with pytest.warns(UserWarning, match="no running statistics"):
        out = bnlab.freeze_batchnorm(untracked)
    assert isinstance(out[0], nn.BatchNorm1d)


def test_input_checks():
    with pytest.raises(ValueError):
        bnlab.FrozenBatchNorm2d(3)(torch.randn(2, 3))
    with pytest.raises(ValueError):
        bnlab.FrozenBatchNorm1d(0)


@pytest.mark.parametrize("make", [
    lambda: bnlab.BatchRenorm2d(3, warmup_steps=0, r_max_steps=0, d_max_steps=0),
    lambda: bnlab.GhostBatchNorm2d(3, virtual_batch_size=2),
    lambda: bnlab.FrozenBatchNorm2d(3),
])
def test_variants_never_call_torch_batchnorm(make):
    """From scratch: no PyTorch batch-norm kernel runs, forward or backward, train or eval."""
    from conftest import forbid_torch_batchnorm

    layer = make()
    x = torch.randn(6, 3, 2, 2, requires_grad=True)
    with forbid_torch_batchnorm():
        for mode in (True, False):
            layer.train(mode)
            layer(x).sum().backward()
