"""fold_batchnorm: oracle = the unfolded model in eval mode (relative 1e-5 in float32)."""
from __future__ import annotations

import pytest
import torch
from torch import fx, nn

import bnlab
from bnlab.surgery.fold import FoldReport

BN_CLS = {
    ("torch", 1): nn.BatchNorm1d, ("torch", 2): nn.BatchNorm2d, ("torch", 3): nn.BatchNorm3d,
    ("bnlab", 1): bnlab.BatchNorm1d, ("bnlab", 2): bnlab.BatchNorm2d, ("bnlab", 3): bnlab.BatchNorm3d,
}
PRODUCERS = {
    "conv1d": (lambda g, b: nn.Conv1d(4, 6, 3, groups=g, bias=b), 1, (5, 4, 9)),
    "conv2d": (lambda g, b: nn.Conv2d(4, 6, 3, groups=g, bias=b, padding=1), 2, (3, 4, 5, 5)),
    "conv3d": (lambda g, b: nn.Conv3d(4, 6, 2, groups=g, bias=b), 3, (2, 4, 3, 3, 3)),
    "convT1d": (lambda g, b: nn.ConvTranspose1d(4, 6, 3, groups=g, bias=b, stride=2), 1, (5, 4, 7)),
    "convT2d": (lambda g, b: nn.ConvTranspose2d(4, 6, 3, groups=g, bias=b), 2, (3, 4, 4, 4)),
    "convT3d": (lambda g, b: nn.ConvTranspose3d(4, 6, 2, groups=g, bias=b), 3, (2, 4, 2, 2, 2)),
    "linear": (lambda g, b: nn.Linear(4, 6, bias=b), 1, (7, 4)),
}


def _randomize(bn):
    """Non-trivial population statistics and affine parameters."""
    with torch.no_grad():
        c = bn.num_features
        if bn.running_mean is not None:
            bn.running_mean.copy_(torch.randn(c) * 2)
            bn.running_var.copy_(torch.rand(c) * 3 + 0.1)
        if bn.weight is not None:
            bn.weight.copy_(torch.randn(c))
        if bn.bias is not None:
            bn.bias.copy_(torch.randn(c))
    return bn


def _rel_err(a, b):
    return float((a - b).abs().max().detach() / b.abs().max().detach())


@pytest.mark.parametrize("producer,groups", [(p, g) for p in PRODUCERS for g in (1, 2) if (p, g) != ("linear", 2)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("impl", ["torch", "bnlab"])
@pytest.mark.parametrize("affine", [True, False])
def test_sequential_fold_matches_eval(producer, groups, bias, impl, affine):
    make, dim, shape = PRODUCERS[producer]
    model = nn.Sequential(make(groups, bias), _randomize(BN_CLS[impl, dim](6, affine=affine)), nn.ReLU()).eval()
    x = torch.randn(shape)
    expect = model(x)
    folded, report = bnlab.fold_batchnorm(model, return_report=True)
    assert report.folded == [("0", "1")] and report.skipped == []
    assert isinstance(folded, nn.Sequential) and isinstance(folded[1], nn.Identity)
    assert not any(isinstance(m, (nn.modules.batchnorm._BatchNorm, bnlab.BatchNorm1d)) for m in folded.modules())
    assert _rel_err(folded(x), expect) <= 1e-5
    torch.testing.assert_close(model(x), expect, rtol=0, atol=0)        # the original is untouched


class Residual(nn.Module):
    """Not a Sequential: conv → BN → ReLU plus a shortcut conv → BN; torch.fx traces it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = _randomize(bnlab.BatchNorm2d(8))
        self.short = nn.Conv2d(3, 8, 1)
        self.short_bn = _randomize(nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 5)
        self.head_bn = _randomize(bnlab.BatchNorm1d(5))

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x))) + self.short_bn(self.short(x))
        return self.head_bn(self.head(y.mean(dim=(2, 3))))


def test_fx_fold_of_a_traceable_model():
    model = Residual().eval()
    x = torch.randn(4, 3, 6, 6)
    expect = model(x)
    folded, report = bnlab.fold_batchnorm(model, return_report=True)
    assert isinstance(folded, fx.GraphModule)
    assert sorted(report.folded) == [("conv", "bn"), ("head", "head_bn"), ("short", "short_bn")]
    assert report.skipped == []
    assert not any("bn" in name for name, _ in folded.named_modules())
    assert _rel_err(folded(x), expect) <= 1e-5


@pytest.mark.parametrize("cls", [
    lambda: _randomize(bnlab.GhostBatchNorm2d(6, virtual_batch_size=2)),
    lambda: _randomize(bnlab.BatchRenorm2d(6)),
    lambda: bnlab.FrozenBatchNorm2d.from_batchnorm(_randomize(nn.BatchNorm2d(6))),
])
def test_variants_fold(cls):
    model = nn.Sequential(nn.Conv2d(3, 6, 3), cls()).eval()
    x = torch.randn(2, 3, 5, 5)
    expect = model(x)
    folded, report = bnlab.fold_batchnorm(model, return_report=True)
    assert len(report.folded) == 1
    assert _rel_err(folded(x), expect) <= 1e-5


def test_unfoldable_layers_are_kept_and_reported():
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.ReLU(), _randomize(nn.BatchNorm2d(6)),                 # after a ReLU
        nn.Conv2d(6, 6, 1), _randomize(nn.BatchNorm2d(6, track_running_stats=False)),  # no running statistics
        nn.Conv2d(6, 6, 1), _randomize(bnlab.BatchNorm2d(6)),                         # foldable
    ).eval()
    x = torch.randn(2, 3, 6, 6)
    expect = model(x)
    folded, report = bnlab.fold_batchnorm(model, return_report=True)
    assert report.folded == [("5", "6")]
    assert [name for name, _ in report.skipped] == ["2", "4"]
    assert "running statistics" in dict(report.skipped)["4"]
    assert isinstance(folded[2], nn.BatchNorm2d) and isinstance(folded[4], nn.BatchNorm2d)
    assert _rel_err(folded(x), expect) <= 1e-5
    with pytest.warns(UserWarning, match="left 2 in place"):
        bnlab.fold_batchnorm(model)
    assert "kept 2" in str(report)


def test_training_mode_bn_is_not_folded():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))     # train mode
    _, report = bnlab.fold_batchnorm(model, return_report=True)
    assert report.folded == [] and "model.eval()" in report.skipped[0][1]
    layer = _randomize(bnlab.BatchNorm1d(4)).eval()
    layer.use_batch_stats = True                                   # policy override counts too
    _, report = bnlab.fold_batchnorm(nn.Sequential(nn.Linear(3, 4), layer), return_report=True)
    assert report.folded == []


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = _randomize(nn.BatchNorm2d(4))

    def forward(self, x):
        if x.sum() > 0:                                            # data-dependent control flow
            x = -x
        return self.bn(self.conv(x))


def test_untraceable_model_is_left_alone_and_reported():
    model = Untraceable().eval()
    x = torch.randn(2, 3, 4, 4)
    folded, report = bnlab.fold_batchnorm(model, return_report=True)
    assert type(folded) is Untraceable and report.folded == []
    assert "torch.fx" in report.skipped[0][1]
    torch.testing.assert_close(folded(x), model(x))


class SharedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = _randomize(nn.BatchNorm2d(3))

    def forward(self, x):
        return self.bn(self.conv(x)) + self.conv(x)


def test_shared_producer_is_not_folded():
    model = SharedConv().eval()
    x = torch.randn(2, 3, 4, 4)
    folded, report = bnlab.fold_batchnorm(model, return_report=True)
    assert report.folded == [] and "elsewhere" in report.skipped[0][1]
    torch.testing.assert_close(folded(x), model(x))


def test_inplace_and_report_type():
    model = nn.Sequential(nn.Linear(3, 4), _randomize(nn.BatchNorm1d(4))).eval()
    x = torch.randn(5, 3)
    expect = model(x)
    out = bnlab.fold_batchnorm(model, inplace=True)
    assert out is model and isinstance(model[1], nn.Identity)
    assert _rel_err(model(x), expect) <= 1e-5
    assert isinstance(bnlab.fold_batchnorm(model, return_report=True)[1], FoldReport)
    with pytest.raises(TypeError):
        bnlab.fold_batchnorm("model")
