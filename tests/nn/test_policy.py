"""The statistics policy of bnlab BN layers: use_batch_stats / update_running_stats.

Oracle: torch.nn.functional.batch_norm with the behaviour each setting stands for
(batch statistics or running ones; buffers updated or not).
"""
from __future__ import annotations

import copy
import itertools
import pickle

import pytest
import torch
import torch.nn.functional as TF

import bnlab

GRID = list(itertools.product([True, False], [None, True, False], [None, True, False]))


def _expected_behaviour(training, use_batch, update):
    uses_batch = training if use_batch is None else use_batch
    updates = uses_batch and (training if update is None else update)
    return uses_batch, updates


@pytest.mark.parametrize("training,use_batch,update", GRID)
def test_policy_grid_against_torch(training, use_batch, update):
    layer = bnlab.BatchNorm2d(3, momentum=0.3)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        layer.running_var.copy_(torch.tensor([2.0, 0.5, 1.5]))
        layer.weight.copy_(torch.tensor([1.5, 0.5, 2.0]))
        layer.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    layer.train(training)
    layer.use_batch_stats, layer.update_running_stats = use_batch, update
    rm, rv, nbt = layer.running_mean.clone(), layer.running_var.clone(), int(layer.num_batches_tracked)
    uses_batch, updates = _expected_behaviour(training, use_batch, update)
    x = (torch.randn(4, 3, 2, 2) * 2 + 1).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    w, b = layer.weight.detach().clone().requires_grad_(), layer.bias.detach().clone().requires_grad_()
    if uses_batch and not updates:
        expect = TF.batch_norm(xr, None, None, w, b, training=True, momentum=0.3)
    else:
        expect = TF.batch_norm(xr, rm, rv, w, b, training=uses_batch, momentum=0.3)
    y = layer(x)
    torch.testing.assert_close(y, expect)
    dy = torch.randn_like(y)
    y.backward(dy), expect.backward(dy)
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(layer.weight.grad, w.grad)
    torch.testing.assert_close(layer.bias.grad, b.grad)
    torch.testing.assert_close(layer.running_mean, rm)              # rm, rv updated by torch iff `updates`
    torch.testing.assert_close(layer.running_var, rv)
    assert int(layer.num_batches_tracked) == nbt + int(updates)


def test_policy_survives_train_eval_copy_and_pickle():
    layer = bnlab.BatchNorm1d(4)
    layer.use_batch_stats, layer.update_running_stats = False, False
    layer.train().eval().train()
    assert (layer.use_batch_stats, layer.update_running_stats) == (False, False)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert (clone.use_batch_stats, clone.update_running_stats) == (False, False)
    assert list(layer.state_dict()) == list(torch.nn.BatchNorm1d(4).state_dict())


def test_finetune_with_frozen_statistics():
    """Frozen statistics, trainable γ/β: gradients equal torch BN in eval mode; buffers never move."""
    tb = torch.nn.BatchNorm1d(4)
    tb(torch.randn(16, 4) * 3)
    layer = bnlab.convert_model(copy.deepcopy(tb), to="bnlab").train()
    layer.use_batch_stats, layer.update_running_stats = False, False
    tb.eval()
    opt_a = torch.optim.SGD(layer.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(tb.parameters(), lr=0.1)
    for _ in range(3):
        x = torch.randn(8, 4)
        for mod, opt in ((layer, opt_a), (tb, opt_b)):
            opt.zero_grad()
            (mod(x) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(layer.weight, tb.weight)
    torch.testing.assert_close(layer.bias, tb.bias)
    torch.testing.assert_close(layer.running_mean, tb.running_mean, rtol=0, atol=0)
    assert int(layer.num_batches_tracked) == int(tb.num_batches_tracked)


def test_without_running_stats_batch_stats_are_always_used():
    layer = bnlab.BatchNorm1d(3, track_running_stats=False)
    layer.use_batch_stats = False
    x = torch.randn(6, 3) + 4
    torch.testing.assert_close(layer.eval()(x), TF.batch_norm(x, None, None, layer.weight, layer.bias, training=True))
    layer.update_running_stats = True                               # nothing to update: no error
    layer.train()(x)


@pytest.mark.parametrize("cls", [bnlab.GhostBatchNorm1d, bnlab.BatchRenorm1d])
def test_variants_share_the_policy(cls):
    layer = cls(3)
    layer.update_running_stats = False
    layer(torch.randn(8, 3) + 2)
    torch.testing.assert_close(layer.running_mean, torch.zeros(3), rtol=0, atol=0)
    assert int(layer.num_batches_tracked) == 0
