"""recalibrate: oracles = statistics of the concatenated data (pooled), torch's
cumulative average / swa_utils.update_bn (Alg. 2), and restoration of every setting."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as TF
from torch import nn
from torch.optim.swa_utils import update_bn

import bnlab


def _net(impl="bnlab", momentum=0.1):
    bn1 = bnlab.BatchNorm1d if impl == "bnlab" else nn.BatchNorm1d
    model = nn.Sequential(nn.Linear(4, 6), bn1(6, momentum=momentum), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(6, 3), bn1(3, momentum=momentum))
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 4) * 3 + 1)                        # stale running statistics
    return model


def _batches(k=5, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 4, generator=g) * 2 + 1 for _ in range(k)]


def _layer_inputs(model, batches):
    """Oracle: each BN layer's inputs, normalizing with batch statistics, Dropout off."""
    lin1, bn1, lin2 = model[0], model[1], model[4]
    h1, h2 = [], []
    with torch.no_grad():
        for x in batches:
            a = lin1(x)
            h1.append(a)
            z = TF.batch_norm(a, None, None, bn1.weight, bn1.bias, training=True, eps=bn1.eps)
            h2.append(lin2(torch.relu(z)))
    return h1, h2


@pytest.mark.parametrize("impl", ["bnlab", "torch"])
def test_pooled_equals_stats_of_concatenated_data(impl):
    model = _net(impl).eval()
    batches = _batches(k=4, n=5) + [torch.randn(9, 4)]                # uneven batch sizes too
    h1, h2 = _layer_inputs(model, batches)
    bnlab.recalibrate(model, batches, method="pooled")
    for bn, hs in ((model[1], h1), (model[5], h2)):
        allh = torch.cat(hs).double()
        torch.testing.assert_close(bn.running_mean, allh.mean(0).float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, allh.var(0, unbiased=True).float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["bnlab", "torch"])
def test_paper_estimator_equals_alg2_and_update_bn(impl):
    model = _net(impl).eval()
    batches = _batches(k=6, n=8)
    h1, h2 = _layer_inputs(model, batches)
    oracle = copy.deepcopy(model)
    bnlab.recalibrate(model, batches, method="paper")
    m = 8
    for bn, hs in ((model[1], h1), (model[5], h2)):
        # Alg. 2: E[x] = mean of batch means; Var[x] = m/(m−1)·mean of biased batch variances
        means = torch.stack([h.double().mean(0) for h in hs])
        variances = torch.stack([h.double().var(0, unbiased=False) for h in hs])
        torch.testing.assert_close(bn.running_mean, means.mean(0).float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, (m / (m - 1) * variances.mean(0)).float(), rtol=1e-5, atol=1e-6)
    # PyTorch's own recipe (momentum=None, train mode) on a torch copy; Dropout must be off for it
    ref = bnlab.convert_model(oracle, to="torch")
    ref[3].p = 0.0
    update_bn(batches, ref)
    for a, b in ((model[1], ref[1]), (model[5], ref[5])):
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-5, atol=1e-6)


def test_restores_momentum_modes_policy_and_counts():
    model = _net("bnlab", momentum=None)
    model[5].momentum = 0.3
    model.eval()
    model[3].train()                                                 # a submodule in its own mode
    model[5].use_batch_stats, model[5].update_running_stats = None, False
    nbt = [int(model[i].num_batches_tracked) for i in (1, 5)]
    modes = [m.training for m in model.modules()]
    model[3].p = 0.0
    bnlab.recalibrate(model, _batches(), num_batches=3)
    assert model[1].momentum is None and model[5].momentum == 0.3
    assert [m.training for m in model.modules()] == modes
    assert (model[5].use_batch_stats, model[5].update_running_stats) == (None, False)
    assert [int(model[i].num_batches_tracked) for i in (1, 5)] == nbt


class _Boom(Exception):
    pass


def _raising(batches, at):
    for i, x in enumerate(batches):
        if i == at:
            raise _Boom
        yield x


@pytest.mark.parametrize("impl", ["bnlab", "torch"])
def test_error_restores_everything(impl):
    model = _net(impl, momentum=0.2).train()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(_Boom):
        bnlab.recalibrate(model, _raising(_batches(), at=2))
    assert model[1].momentum == 0.2 and model[5].momentum == 0.2
    assert all(m.training for m in model.modules())
    if impl == "bnlab":
        assert model[1].use_batch_stats is None and model[1].update_running_stats is None
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert not model[1]._forward_pre_hooks                            # hooks removed


def test_a_forward_that_raises_inside_the_model():
    model = _net().eval()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError):
        bnlab.recalibrate(model, [torch.randn(4, 4), torch.randn(4, 7)])   # wrong width on batch 2
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert not any(m.training for m in model.modules())


def test_num_batches_limits_consumption_and_tuples_work():
    model = _net().eval()
    seen = []

    def gen():
        for i, x in enumerate(_batches(k=10)):
            seen.append(i)
            yield (x, torch.zeros(len(x)))
    bnlab.recalibrate(model, gen(), num_batches=3, method="pooled")
    assert seen == [0, 1, 2]                                         # no batch pulled beyond
    ref = _net().eval()
    ref.load_state_dict(model.state_dict())
    h1, _ = _layer_inputs(ref, _batches(k=10)[:3])
    torch.testing.assert_close(model[1].running_mean, torch.cat(h1).mean(0), rtol=1e-5, atol=1e-6)


def test_renorm_and_ghost_layers_are_recalibrated():
    model = nn.Sequential(nn.Linear(4, 5), bnlab.BatchRenorm1d(5), nn.Linear(5, 5),
                          bnlab.GhostBatchNorm1d(5, virtual_batch_size=2)).eval()
    batches = _batches(k=3)
    bnlab.recalibrate(model, batches, method="pooled")
    with torch.no_grad():
        h = torch.cat([model[0](x) for x in batches])
    torch.testing.assert_close(model[1].running_mean, h.mean(0), rtol=1e-5, atol=1e-6)
    # Batch Renorm stores σ² − ε, so its eval transform uses σ = sqrt(Var + ε) as BN does
    torch.testing.assert_close(model[1].running_var, h.var(0), rtol=1e-5, atol=1e-6)


def test_validation_and_no_bn():
    with pytest.raises(ValueError):
        bnlab.recalibrate(_net(), _batches(), method="ema")
    with pytest.raises(ValueError):
        bnlab.recalibrate(_net(), _batches(), num_batches=-1)
    with pytest.warns(UserWarning, match="no BatchNorm"):
        bnlab.recalibrate(nn.Linear(4, 4), _batches())
