"""SyncBatchNorm without peers: local fallback, the Chan merge, input checks, torch parity.

Oracles: ``torch.nn.SyncBatchNorm`` (which, like ours, is local BN when no process
group is initialized), float64 gradgradcheck, and NumPy's two-pass variance on
the concatenated shards. The multi-process identity tests are in ``test_sync.py``.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.distributed as dist

import bnlab
from bnlab.nn import _dist_stats as ds


def _set_params(*layers):
    gen = torch.Generator().manual_seed(3)
    c = layers[0].num_features
    w, b = 1 + 0.3 * torch.randn(c, generator=gen), torch.randn(c, generator=gen)
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(w)
            layer.bias.copy_(b)


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (3, 3, 2, 4), (2, 3, 2, 2, 3), (2, 3, 2, 1, 2, 2)])
def test_without_process_group_is_local_bn(shape):
    # oracle: torch.nn.SyncBatchNorm, which falls back to F.batch_norm when no group is initialized
    assert not dist.is_initialized()
    ours = bnlab.SyncBatchNorm(shape[1], momentum=0.2, dtype=torch.float64)
    ref = torch.nn.SyncBatchNorm(shape[1], momentum=0.2, dtype=torch.float64)
    _set_params(ours, ref)
    for step in range(3):
        x = torch.randn(shape, dtype=torch.float64) * 2 + 1
        g = torch.randn(shape, dtype=torch.float64)
        outs = []
        for layer in (ours, ref):
            xi = x.clone().requires_grad_(True)
            (layer(xi) * g).sum().backward()
            outs.append((layer(x).detach(), xi.grad, layer.weight.grad.clone(), layer.bias.grad.clone()))
            layer.zero_grad(set_to_none=True)
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), rtol=1e-10, atol=1e-12)
    ours.eval(), ref.eval()
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-10, atol=1e-12)


def test_without_process_group_double_backward():
    # the local path is bnlab's own BN, double backward included
    layer = bnlab.SyncBatchNorm(2, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: layer(t), (x,))


@pytest.mark.parametrize("sizes", [(5, 3, 0), (2, 7, 1), (0, 0, 4), (1, 1, 1, 1, 1)])
def test_chan_merge_is_exact_on_offset_data(sizes):
    # oracle: NumPy two-pass in float64 on the concatenation; x = 1e8 + z leaves E[x²]−E[x]² no digits
    gen = torch.Generator().manual_seed(sum(sizes))
    shards = [1e8 + torch.randn(n, 3, 4, generator=gen, dtype=torch.float64) for n in sizes]
    gathered = torch.stack([ds.local_summary(s) for s in shards])                  # (W, 1 + 2C)
    m, mean, m2 = ds.merge_summaries(gathered)
    full = torch.cat(shards).transpose(0, 1).reshape(3, -1).numpy()                # (C, m)
    assert m == full.shape[1]
    np.testing.assert_allclose(mean.numpy(), full.mean(axis=1), rtol=1e-15)
    # a (count, mean, M2) summary holds μ_r only to ulp(1e8) = 1.5e-8, so δ = μ_b − μ_a and the
    # merged σ² carry a relative error of that order (measured ≤ 9e-9); E[x²]−E[x]² is off by O(1)
    np.testing.assert_allclose((m2 / m).numpy(), full.var(axis=1), rtol=1e-7)
    naive = (full ** 2).mean(axis=1) - full.mean(axis=1) ** 2
    assert np.abs(naive - full.var(axis=1)).max() > 0.1        # the formula the merge avoids
    assert torch.equal(ds.local_summary(torch.empty(0, 3, 4)), torch.zeros(7, dtype=torch.float64))


def test_input_checks_match_torch_sync_batchnorm():
    layer = bnlab.SyncBatchNorm(3)
    with pytest.raises(ValueError, match="expected at least 2D input"):
        layer(torch.randn(3))
    with pytest.raises(ValueError, match="channels should be non-zero"):
        bnlab.SyncBatchNorm(3)(torch.randn(2, 0))
    with pytest.raises(ValueError, match="num_features"):
        layer(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.randn(1, 3))


def test_constructor_and_state_dict_match_torch():
    names = list(inspect.signature(bnlab.SyncBatchNorm).parameters)
    assert names == list(inspect.signature(torch.nn.SyncBatchNorm).parameters)
    ours, ref = bnlab.SyncBatchNorm(4, 1e-3, 0.3, process_group="pg"), torch.nn.SyncBatchNorm(4, 1e-3, 0.3)
    assert ours.process_group == "pg" and isinstance(ours, bnlab.nn.batchnorm._BatchNorm)
    ref.running_mean.normal_(), ref.weight.data.normal_(), ref.num_batches_tracked.fill_(5)
    ours.load_state_dict(ref.state_dict())
    assert list(ours.state_dict()) == list(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v)
