"""Ghost BN (Hoffer et al. 2017): identity with BN, per-ghost oracle built from torch BN, order of updates."""
from __future__ import annotations

import pytest
import torch

import bnlab
from bnlab.functional import ghost_sizes

SHAPES = {1: (12, 3), 2: (8, 3, 3, 2), 3: (6, 2, 2, 2, 3)}
GHOST = {1: bnlab.GhostBatchNorm1d, 2: bnlab.GhostBatchNorm2d, 3: bnlab.GhostBatchNorm3d}
BNLAB = {1: bnlab.BatchNorm1d, 2: bnlab.BatchNorm2d, 3: bnlab.BatchNorm3d}
TORCH = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}


def _run(layer, x, dy):
    xi = x.clone().requires_grad_()
    y = layer(xi)
    y.backward(dy)
    grads = (xi.grad, layer.weight.grad.clone(), layer.bias.grad.clone())
    layer.weight.grad = layer.bias.grad = None
    return y.detach(), grads


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("vbs_extra", [0, 5])
def test_one_ghost_batch_is_batchnorm(dim, momentum, vbs_extra):
    """virtual_batch_size >= N: outputs, gradients and buffers of bnlab (bit for bit) and torch BN."""
    n = SHAPES[dim][0]
    c = SHAPES[dim][1]
    ghost = GHOST[dim](c, momentum=momentum, virtual_batch_size=n + vbs_extra)
    ours, ref = BNLAB[dim](c, momentum=momentum), TORCH[dim](c, momentum=momentum)
    for _ in range(3):
        x, dy = torch.randn(SHAPES[dim]) * 2 + 3, torch.randn(SHAPES[dim])
        yg, gg = _run(ghost, x, dy)
        yb, gb = _run(ours, x, dy)
        yt, gt = _run(ref, x, dy)
        torch.testing.assert_close(yg, yb, rtol=0, atol=0)
        for a, b in zip(gg, gb):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(yg, yt, rtol=2e-5, atol=2e-5)
        for a, b in zip(gg, gt):
            torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)
    for k, v in ghost.state_dict().items():
        torch.testing.assert_close(v, ours.state_dict()[k], rtol=0, atol=0)
        torch.testing.assert_close(v, ref.state_dict()[k])


# ghost size 1 on (N, C) input would leave one value per channel: not a valid case
@pytest.mark.parametrize("dim,vbs", [(d, v) for d in (1, 2, 3) for v in (1, 3, 5) if (d, v) != (1, 1)])
def test_ghost_batches_match_torch_per_slice(dim, vbs, backend):
    """Oracle: torch BN run on each ghost slice in order, sharing the running buffers."""
    n, c = SHAPES[dim][0], SHAPES[dim][1]
    ghost = GHOST[dim](c, virtual_batch_size=vbs)
    ref = TORCH[dim](c)
    with torch.no_grad():
        for layer in (ghost, ref):
            layer.weight.copy_(torch.linspace(0.5, 2, c))
            layer.bias.copy_(torch.linspace(-1, 1, c))
    x, dy = torch.randn(SHAPES[dim]) * 3 - 2, torch.randn(SHAPES[dim])
    y, (dx, dw, db) = _run(ghost, x, dy)
    sizes = ghost_sizes(x, vbs)
    assert sum(sizes) == n
    ys, dxs, dws, dbs = [], [], 0, 0
    for xs, dys in zip(torch.split(x, sizes), torch.split(dy, sizes)):
        yr, (dxr, dwr, dbr) = _run(ref, xs, dys)
        ys.append(yr), dxs.append(dxr)
        dws, dbs = dws + dwr, dbs + dbr
    torch.testing.assert_close(y, torch.cat(ys), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(dx, torch.cat(dxs), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(dw, dws, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(db, dbs, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(ghost.running_mean, ref.running_mean)
    torch.testing.assert_close(ghost.running_var, ref.running_var)
    assert int(ghost.num_batches_tracked) == len(sizes) == int(ref.num_batches_tracked)
    ghost.eval(), ref.eval()                                         # eval: plain Alg. 2
    torch.testing.assert_close(ghost(x), ref(x))


def test_update_order_matters_and_is_ghost_zero_first():
    """With momentum 1 the running statistics are the *last* ghost batch's."""
    ghost = bnlab.GhostBatchNorm1d(2, momentum=1.0, virtual_batch_size=3)
    x = torch.cat([torch.randn(3, 2), torch.randn(3, 2) + 10])
    ghost(x)
    torch.testing.assert_close(ghost.running_mean, x[3:].mean(0))
    torch.testing.assert_close(ghost.running_var, x[3:].var(0, unbiased=True))


@pytest.mark.parametrize("n,vbs,shape_tail,expect", [
    (10, 4, (3,), [4, 4, 2]),
    (9, 4, (3,), [4, 5]),            # a lone 1-value remainder joins the previous ghost batch
    (9, 4, (3, 2, 2), [4, 4, 1]),    # one sample with 4 positions is a valid ghost batch
    (4, 8, (3,), [4]),
    (0, 4, (3,), [0]),
])
def test_ghost_sizes(n, vbs, shape_tail, expect):
    assert ghost_sizes(torch.empty(n, *shape_tail), vbs) == expect


def test_functional_matches_module():
    x = torch.randn(10, 3, 4)
    rm, rv = torch.zeros(3), torch.ones(3)
    layer = bnlab.GhostBatchNorm1d(3, virtual_batch_size=4)
    y = bnlab.functional.ghost_batch_norm(x, rm, rv, layer.weight, layer.bias, training=True, virtual_batch_size=4)
    torch.testing.assert_close(layer(x), y, rtol=0, atol=0)
    torch.testing.assert_close(layer.running_mean, rm, rtol=0, atol=0)
    torch.testing.assert_close(layer.running_var, rv, rtol=0, atol=0)


def test_nonfinite_ghost_batch_is_skipped_alone():
    ghost = bnlab.GhostBatchNorm1d(2, virtual_batch_size=3)
    ref = torch.nn.BatchNorm1d(2)
    x = torch.randn(9, 2)
    x[4, 1] = float("nan")                                           # in ghost batch 1 of 3
    with pytest.warns(RuntimeWarning):
        ghost(x)
    for xs in (x[:3], x[6:]):
        ref(xs)
    assert ghost.skipped_batches == 1 and int(ghost.num_batches_tracked) == 2
    torch.testing.assert_close(ghost.running_mean, ref.running_mean)
    torch.testing.assert_close(ghost.running_var, ref.running_var)


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_virtual_batch_size_validation(bad):
    with pytest.raises(ValueError):
        bnlab.GhostBatchNorm2d(3, virtual_batch_size=bad)


def test_repr_and_state_dict_keys():
    g = bnlab.GhostBatchNorm2d(4, virtual_batch_size=16)
    assert "virtual_batch_size=16" in repr(g)
    assert list(g.state_dict()) == list(torch.nn.BatchNorm2d(4).state_dict())
