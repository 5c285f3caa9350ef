"""Tools that recognise BatchNorm by class treat bnlab's layers as PyTorch's.

Oracle: the same tool applied to the same model built with torch.nn.BatchNorm*d
(state copied), compared buffer by buffer, output by output. The layers' math stays
bnlab's: every forward here runs with PyTorch's batch norm forbidden.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import bnlab
from conftest import forbid_torch_batchnorm


def _pair(seed=0):
    """(bnlab model, torch model) with identical parameters."""
    torch.manual_seed(seed)
    ours = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), bnlab.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 25, 6), bnlab.BatchNorm1d(6))
    theirs = bnlab.convert_model(copy.deepcopy(ours), to="torch")
    assert type(theirs[1]) is nn.BatchNorm2d and type(theirs[5]) is nn.BatchNorm1d
    return ours, theirs


def _batches(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 5, 5, generator=g) * 2 + 1 for _ in range(n)]


def test_classes_are_torchs():
    from torch.nn.modules.batchnorm import _BatchNorm

    for dim in (1, 2, 3):
        for name in ("BatchNorm", "GhostBatchNorm", "BatchRenorm"):
            layer = getattr(bnlab, f"{name}{dim}d")(4)
            assert isinstance(layer, getattr(nn, f"BatchNorm{dim}d")) and isinstance(layer, _BatchNorm)
            assert repr(layer).startswith(f"bnlab.{name}{dim}d(4, eps=1e-05")
    assert isinstance(bnlab.SyncBatchNorm(4), _BatchNorm)
    # not torch's SyncBatchNorm: DDP refuses that class on CPU, bnlab's runs on gloo
    assert not isinstance(bnlab.SyncBatchNorm(4), nn.SyncBatchNorm)
    # frozen BN is torchvision's kind: a plain Module, so statistics tools leave it alone
    assert not isinstance(bnlab.FrozenBatchNorm2d(4), _BatchNorm)


def test_swa_update_bn_recomputes_statistics_like_torch():
    ours, theirs = _pair()
    loader = _batches()
    with forbid_torch_batchnorm():
        ours(loader[0] * 5)                                          # stale statistics to overwrite
    theirs(loader[0] * 5)
    with forbid_torch_batchnorm():
        torch.optim.swa_utils.update_bn(loader, ours)
    torch.optim.swa_utils.update_bn(loader, theirs)
    for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    assert ours[1].momentum == 0.1                                   # restored by update_bn


def test_update_bn_leaves_frozen_layers_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), bnlab.FrozenBatchNorm2d(4), bnlab.GhostBatchNorm2d(4))
    before = model[1].running_mean.clone()
    torch.optim.swa_utils.update_bn(_batches(), model)
    assert torch.equal(model[1].running_mean, before)
    assert int(model[2].num_batches_tracked) > 0                    # the Ghost BN was recalibrated


def test_freeze_pattern_by_isinstance():
    ours, theirs = _pair()
    for m in (ours, theirs):
        m.train()
        m.apply(lambda mod: mod.eval() if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)) else None)
    before = ours[1].running_mean.clone()
    x = _batches(1)[0]
    with forbid_torch_batchnorm():
        y = ours(x)
    torch.testing.assert_close(y, theirs(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(ours[1].running_mean, before) and not ours[1].training


def test_weight_decay_split_by_isinstance():
    def split(model):
        decay, no_decay = [], []
        for mod_name, mod in model.named_modules():
            for p_name, _ in mod.named_parameters(recurse=False):
                bucket = no_decay if isinstance(mod, nn.modules.batchnorm._BatchNorm) else decay
                bucket.append(f"{mod_name}.{p_name}")
        return decay, no_decay

    ours, theirs = _pair()
    assert split(ours) == split(theirs)
    assert split(ours)[1] == ["1.weight", "1.bias", "5.weight", "5.bias"]


def test_functorch_replace_all_batch_norm_modules_then_vmap():
    """replace_all_batch_norm_modules_ drops running statistics on bnlab layers too; vmap then works."""
    ours, theirs = _pair()
    for m in (ours, theirs):
        torch.func.replace_all_batch_norm_modules_(m)
    assert ours[1].running_mean is None and not ours[1].track_running_stats
    xs = torch.stack(_batches(3))                                    # (3, 8, 3, 5, 5)
    out = torch.func.vmap(ours)(xs)
    torch.testing.assert_close(out, torch.func.vmap(theirs)(xs), rtol=1e-5, atol=1e-5)


def test_torch_convert_sync_batchnorm_gives_torch_layers_sharing_state():
    """torch's converter replaces bnlab layers by torch.nn.SyncBatchNorm (PyTorch's kernels), state shared.

    Documented behaviour: use bnlab.convert_sync_batchnorm to keep bnlab's layers
    (CPU/gloo, Ghost/Renorm semantics); torch's converter treats them as any _BatchNorm.
    """
    ours, theirs = _pair()
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(ours))
    assert type(converted[1]) is nn.SyncBatchNorm and type(converted[5]) is nn.SyncBatchNorm
    converted.eval(), ours.eval()
    x = _batches(1)[0]
    torch.testing.assert_close(converted(x), ours(x), rtol=1e-5, atol=1e-5)
    mine = bnlab.convert_sync_batchnorm(copy.deepcopy(ours))
    assert type(mine[1]) is bnlab.SyncBatchNorm
