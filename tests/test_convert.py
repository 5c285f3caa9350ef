"""convert_model swaps every BatchNorm layer, exactly, both ways."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import bnlab


def make_model():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=None), nn.ReLU()),
        nn.Flatten(), nn.Linear(8 * 6 * 6, 10), nn.BatchNorm1d(10, affine=False),
    )


def _train_a_bit(model, steps=2):
    for _ in range(steps):
        model(torch.randn(4, 3, 6, 6, dtype=model[0].weight.dtype)).square().sum().backward()
    model.zero_grad(set_to_none=True)


def test_convert_carries_state_and_matches():
    torch_model = make_model().double()   # float64: gradients comparable to round-off
    _train_a_bit(torch_model)
    torch_model[1].weight.requires_grad_(False)
    torch_model[3].eval()
    ours = bnlab.convert_model(make_model_copy(torch_model), to="bnlab")
    kinds = [type(m) for m in ours.modules()]
    assert nn.BatchNorm2d not in kinds and nn.BatchNorm1d not in kinds
    assert kinds.count(bnlab.BatchNorm2d) == 2 and kinds.count(bnlab.BatchNorm1d) == 1
    assert ours[1].weight.requires_grad is False
    assert ours[3].training is False and ours[3][1].training is False and ours.training
    for (k1, v1), (k2, v2) in zip(torch_model.state_dict().items(), ours.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    # same outputs, gradients and buffer updates
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    y1, y2 = torch_model(x), ours(x)
    torch.testing.assert_close(y1, y2)
    y1.square().sum().backward()
    y2.square().sum().backward()
    for (n, p1), p2 in zip(torch_model.named_parameters(), ours.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, msg=lambda d: f"{n}: {d}")
    for b1, b2 in zip(torch_model.buffers(), ours.buffers()):
        torch.testing.assert_close(b1, b2)


def make_model_copy(model):
    import copy
    return copy.deepcopy(model)


def test_round_trip_is_exact():
    model = make_model()
    _train_a_bit(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    back = bnlab.convert_model(bnlab.convert_model(model, to="bnlab"), to="torch")
    assert [type(m) for m in back.modules()] == [type(m) for m in make_model().modules()]
    for k, v in back.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == before[k].dtype, k


def test_dtype_and_bare_layer():
    layer = nn.BatchNorm2d(4, dtype=torch.float64, bias=False)
    new = bnlab.convert_model(layer, to="bnlab")
    assert type(new) is bnlab.BatchNorm2d and new.weight.dtype == torch.float64 and new.bias is None
    assert type(bnlab.convert_model(new, to="torch")) is nn.BatchNorm2d


def test_leaves_subclasses_and_other_layers():
    model = nn.Sequential(nn.SyncBatchNorm(4), nn.GroupNorm(2, 4), nn.LayerNorm(4))
    out = bnlab.convert_model(model, to="bnlab")
    assert [type(m) for m in out] == [nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm]


def test_bad_arguments():
    with pytest.raises(ValueError, match="'bnlab' or 'torch'"):
        bnlab.convert_model(nn.BatchNorm2d(3), to="keras")
    with pytest.raises(TypeError, match="nn.Module"):
        bnlab.convert_model("model")
