"""convert_sync_batchnorm: every BN layer becomes a bnlab.SyncBatchNorm carrying its state.

Oracles: identity of the shared Parameter/buffer objects, the unconverted model's
outputs and gradients (no process group: SyncBatchNorm is local BN), and a
state_dict round trip into a fresh copy of the original architecture.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import bnlab


class _VariantBN(bnlab.BatchNorm2d):
    """Stands for a bnlab variant (Ghost BN, Batch Renorm, ...): not plain BN, must be left alone."""


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),                                            # torch
        nn.ReLU(),
        nn.Sequential(bnlab.BatchNorm2d(4, momentum=None), _VariantBN(4)),   # bnlab, nested
        nn.SyncBatchNorm(4, affine=False),                           # torch's SyncBN (CPU-less)
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 6),
        bnlab.BatchNorm1d(6, eps=1e-3, bias=False),
        nn.BatchNorm1d(6, track_running_stats=False),
    ).double()


def _trained_model() -> nn.Module:
    model = _model()
    for _ in range(2):                                                # non-trivial statistics
        model(torch.randn(8, 3, 5, 5, dtype=torch.float64)).sum().backward()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model[3][0].nonfinite_guard = False                               # a bnlab policy switch
    model[7].eval()                                                    # a layer in eval mode
    return model


def test_converts_every_plain_bn_and_shares_state():
    model = _trained_model()
    before = {name: m for name, m in model.named_modules()}
    params = {name: p for name, p in model.named_parameters()}
    buffers = {name: b for name, b in model.named_buffers()}
    out = bnlab.convert_sync_batchnorm(model, process_group="group-A")
    assert out is model                                                # the root is not BN: changed in place
    kinds = {name: type(m) for name, m in out.named_modules()}
    for name in ("1", "3.0", "4", "7", "8"):
        assert kinds[name] is bnlab.SyncBatchNorm, name
        new, old = dict(out.named_modules())[name], before[name]
        assert new.process_group == "group-A"
        for attr in ("num_features", "eps", "momentum", "affine", "track_running_stats", "training"):
            assert getattr(new, attr) == getattr(old, attr), (name, attr)
        assert (new.bias is None) == (old.bias is None)
    assert kinds["3.1"] is _VariantBN and kinds["0"] is nn.Conv2d
    assert out[3][0].nonfinite_guard is False and out[7].training is False
    # the very same Parameter and buffer objects: an optimizer built before still works
    for name, p in out.named_parameters():
        assert p is params[name], name
    for name, b in out.named_buffers():
        assert b is buffers[name], name


@pytest.mark.parametrize("training", [True, False])
def test_outputs_gradients_and_state_dict_round_trip(training):
    model = _trained_model()
    reference = copy.deepcopy(model)
    converted = bnlab.convert_sync_batchnorm(copy.deepcopy(model))
    reference.train(training), converted.train(training)
    reference[4].train(False), converted[4].train(False)              # torch's SyncBN refuses CPU in training
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    ys = [m(xi) for m, xi in zip((reference, converted), xs)]
    torch.testing.assert_close(ys[1], ys[0], rtol=1e-10, atol=1e-12)
    for y in ys:
        y.pow(2).sum().backward()
    torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-9, atol=1e-10)
    for (name, p), q in zip(reference.named_parameters(), converted.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-10, msg=name)
    # state_dicts have the same keys and load both ways: back into the original architecture
    sd = converted.state_dict()
    assert list(sd) == list(reference.state_dict())
    fresh = _model()
    fresh.load_state_dict(sd)
    for (k, v), w, r in zip(sd.items(), fresh.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(w, v), k                                  # exact round trip
        torch.testing.assert_close(v, r, rtol=1e-10, atol=1e-12, msg=k)   # and the same training as torch's


def test_bare_layer_classmethod_and_errors():
    bn = nn.BatchNorm3d(5)
    bn.running_mean.normal_()
    sync = bnlab.SyncBatchNorm.convert_sync_batchnorm(bn, process_group=None)
    assert type(sync) is bnlab.SyncBatchNorm and sync.running_mean is bn.running_mean and sync.weight is bn.weight
    again = bnlab.convert_sync_batchnorm(sync, process_group="g2")   # a SyncBatchNorm gets the new group
    assert again.process_group == "g2" and again.weight is bn.weight
    with pytest.raises(TypeError, match="nn.Module"):
        bnlab.convert_sync_batchnorm("not a module")
    with pytest.raises(ValueError, match="lazy"):
        bnlab.convert_sync_batchnorm(nn.LazyBatchNorm1d())
