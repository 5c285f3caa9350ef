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


def test_converts_sync_and_leaves_other_norms():
    model = nn.Sequential(nn.SyncBatchNorm(4), nn.GroupNorm(2, 4), nn.LayerNorm(4))
    out, report = bnlab.convert_model(model, to="bnlab", return_report=True)
    assert [type(m) for m in out] == [bnlab.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm]
    assert report.converted == [("0", "SyncBatchNorm", "bnlab.SyncBatchNorm")] and report.skipped == []


class BatchNormAct2d(nn.BatchNorm2d):
    """A minimal look-alike of timm's ``BatchNormAct2d``: BN, then ``drop``, then ``act``."""

    def __init__(self, num_features, act_layer=nn.ReLU, **kwargs):
        super().__init__(num_features, **kwargs)
        self.drop = nn.Identity()
        self.act = act_layer()

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))


class _OtherSubclass(nn.BatchNorm2d):
    def forward(self, x):
        return super().forward(x) * 2


@pytest.mark.parametrize("act_layer", [nn.ReLU, nn.SiLU, nn.Identity])
def test_timm_style_norm_act_keeps_its_activation(act_layer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct2d(4, act_layer=act_layer)).double()
    model(torch.randn(4, 3, 6, 6, dtype=torch.float64))              # non-trivial statistics
    ours, report = bnlab.convert_model(model, return_report=True)
    assert type(ours[1]) is bnlab.BatchNormAct2d and type(ours[1].act) is act_layer
    assert len(report.converted) == 1 and not report.skipped
    assert ours.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    for train in (True, False):
        model.train(train), ours.train(train)
        torch.testing.assert_close(ours(x), model(x))


def test_unknown_subclass_is_left_and_named():
    model = nn.Sequential(nn.BatchNorm2d(3), _OtherSubclass(3))
    with pytest.warns(UserWarning, match=r"left 1 BatchNorm layer.*1 \(_OtherSubclass"):
        out = bnlab.convert_model(model)
    assert type(out[0]) is bnlab.BatchNorm2d and type(out[1]) is _OtherSubclass


def test_variants_back_to_torch_are_left_and_named():
    model = nn.Sequential(bnlab.BatchNorm2d(3), bnlab.GhostBatchNorm2d(3), bnlab.FrozenBatchNorm2d(3))
    out, report = bnlab.convert_model(model, to="torch", return_report=True)
    assert [type(m) for m in out] == [nn.BatchNorm2d, bnlab.GhostBatchNorm2d, bnlab.FrozenBatchNorm2d]
    assert [name for name, _ in report.skipped] == ["1", "2"] and "no PyTorch equivalent" in report.skipped[0][1]
    assert "converted 1 BatchNorm layer(s), left 2" in str(report)


def test_copy_by_default_inplace_on_request(caplog):
    """As fold_batchnorm: a converted copy unless inplace=True; the count is logged."""
    model = make_model()
    with caplog.at_level("INFO", logger="bnlab"):
        out = bnlab.convert_model(model)
    assert out is not model and type(model[1]) is nn.BatchNorm2d and type(out[1]) is bnlab.BatchNorm2d
    assert "converted 3 BatchNorm layer(s)" in caplog.text
    same = bnlab.convert_model(model, inplace=True)
    assert same is model and type(model[1]) is bnlab.BatchNorm2d


def test_fuse_act_fuses_bn_relu_pairs_and_keeps_the_function():
    torch.manual_seed(0)
    model = make_model()
    _train_a_bit(model)
    model.eval()
    out, report = bnlab.convert_model(model, fuse_act=True, return_report=True)
    assert report.fused == 2 and "fused 2" in str(report)
    assert type(out[1]) is bnlab.BatchNormAct2d and type(out[2]) is nn.Identity
    assert out.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(4, 3, 6, 6)
    torch.testing.assert_close(out(x), model(x))
    with pytest.raises(ValueError, match="fuse_act"):
        bnlab.convert_model(model, to="torch", fuse_act=True)


def test_bad_arguments():
    with pytest.raises(ValueError, match="'bnlab' or 'torch'"):
        bnlab.convert_model(nn.BatchNorm2d(3), to="keras")
    with pytest.raises(TypeError, match="nn.Module"):
        bnlab.convert_model("model")
