"""Batch Renorm (Ioffe 2017): NumPy oracle over several steps with the schedule, identities, state."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import bnlab
from bnlab.nn.renorm import RenormSchedule

SHAPES = {1: (6, 3, 5), 2: (4, 3, 3, 2), 3: (3, 3, 2, 2, 2)}
CLASSES = {1: bnlab.BatchRenorm1d, 2: bnlab.BatchRenorm2d, 3: bnlab.BatchRenorm3d}


def _oracle_limits(t, r_final, d_final, warm, r_end, d_end):
    """The schedule written out independently: BN until `warm`, linear ramps, then flat."""
    def ramp(end):
        return min(max((t - warm) / (end - warm), 0.0), 1.0)
    return 1.0 + (r_final - 1.0) * ramp(r_end), d_final * ramp(d_end)


class NumpyRenorm:
    """Ioffe 2017, Alg. 1 in float64 NumPy, with the running μ and σ of the paper."""

    def __init__(self, c, eps, momentum, gamma, beta, sched):
        self.mu = np.zeros(c)
        self.sigma = np.sqrt(np.ones(c) + eps)                      # running_var = 1 ⇔ σ = sqrt(1 + ε)
        self.eps, self.alpha, self.gamma, self.beta, self.sched = eps, momentum, gamma, beta, sched
        self.t = 0

    def step(self, x, dy):
        axes = (0,) + tuple(range(2, x.ndim))
        shp = (1, -1) + (1,) * (x.ndim - 2)
        r_max, d_max = _oracle_limits(self.t, *self.sched)
        mu_b = x.mean(axis=axes)
        sigma_b = np.sqrt(((x - mu_b.reshape(shp)) ** 2).mean(axis=axes) + self.eps)
        r = np.clip(sigma_b / self.sigma, 1 / r_max, r_max)
        d = np.clip((mu_b - self.mu) / self.sigma, -d_max, d_max)
        xhat_bn = (x - mu_b.reshape(shp)) / sigma_b.reshape(shp)
        xhat = xhat_bn * r.reshape(shp) + d.reshape(shp)
        y = self.gamma.reshape(shp) * xhat + self.beta.reshape(shp)
        # backward with r, d constants: BN's closed form with upstream g = dy·γ·r
        g = dy * (self.gamma * r).reshape(shp)
        dx = (g - g.mean(axis=axes).reshape(shp) - xhat_bn * (g * xhat_bn).mean(axis=axes).reshape(shp)) / sigma_b.reshape(shp)
        dgamma = (dy * xhat).sum(axis=axes)
        dbeta = dy.sum(axis=axes)
        # μ ← μ + α(μ_B − μ),  σ ← σ + α(σ_B − σ)
        self.mu = self.mu + self.alpha * (mu_b - self.mu)
        self.sigma = self.sigma + self.alpha * (sigma_b - self.sigma)
        self.t += 1
        return y, dx, dgamma, dbeta, (r_max, d_max)


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_numpy_oracle_over_schedule(dim, momentum):
    sched = (1.5, 0.4, 2, 6, 4)   # r_max, d_max, warmup, r_max_steps, d_max_steps
    torch.manual_seed(1)
    c = SHAPES[dim][1]
    layer = CLASSES[dim](c, momentum=momentum, r_max=sched[0], d_max=sched[1], warmup_steps=sched[2],
                         r_max_steps=sched[3], d_max_steps=sched[4], dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(c, dtype=torch.float64) + 0.5)
        layer.bias.copy_(torch.randn(c, dtype=torch.float64))
    ref = NumpyRenorm(c, layer.eps, momentum, layer.weight.detach().numpy().copy(),
                      layer.bias.detach().numpy().copy(), sched)
    clipped = 0
    for step in range(9):
        # drifting scale and offset so that both clips bind once relaxed
        x = (torch.randn(SHAPES[dim], dtype=torch.float64) * (0.3 + 0.5 * step) + 2.0 - step).requires_grad_()
        dy = torch.randn(SHAPES[dim], dtype=torch.float64)
        assert layer.current_limits() == pytest.approx(_oracle_limits(step, *sched))
        y = layer(x)
        y.backward(dy)
        y_ref, dx_ref, dg_ref, db_ref, (r_max, d_max) = ref.step(x.detach().numpy(), dy.numpy())
        np.testing.assert_allclose(y.detach().numpy(), y_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(x.grad.numpy(), dx_ref, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(layer.weight.grad.numpy(), dg_ref, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(layer.bias.grad.numpy(), db_ref, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(layer.running_mean.numpy(), ref.mu, rtol=1e-12, atol=1e-12)
        # running σ stored as running_var = σ² − ε
        np.testing.assert_allclose(np.sqrt(layer.running_var.numpy() + layer.eps), ref.sigma, rtol=1e-12)
        assert int(layer.num_batches_tracked) == step + 1
        layer.weight.grad = layer.bias.grad = None
        clipped += (r_max > 1.0)
    assert clipped >= 4
    # eval: y = γ·(x − μ)/σ + β with the oracle's running μ, σ
    layer.eval()
    x = torch.randn(SHAPES[dim], dtype=torch.float64)
    shp = (1, -1) + (1,) * (dim)
    expect = (x.numpy() - ref.mu.reshape(shp)) / ref.sigma.reshape(shp) * ref.gamma.reshape(shp) + ref.beta.reshape(shp)
    np.testing.assert_allclose(layer(x).detach().numpy(), expect, rtol=1e-10, atol=1e-10)


def test_paper_default_schedule():
    s = RenormSchedule()
    assert (s.r_max, s.d_max, s.warmup_steps, s.r_max_steps, s.d_max_steps) == (3.0, 5.0, 5000, 40000, 25000)
    assert s.limits(0) == (1.0, 0.0) and s.limits(5000) == (1.0, 0.0)
    assert s.limits(25000) == pytest.approx((1.0 + 2.0 * 20000 / 35000, 5.0))
    assert s.limits(40000) == (3.0, 5.0)
    assert s.limits(10**7) == (3.0, 5.0)


@pytest.mark.parametrize("sched", [RenormSchedule(), RenormSchedule(2.0, 1.0, 0, 0, 0),
                                   RenormSchedule(4.0, 2.0, 10, 5, 20), RenormSchedule(1.0, 0.0, 3, 7, 9)])
def test_schedule_monotone_and_never_exceeds_final(sched):
    for t in list(range(0, 60000, 97)) + [sched.warmup_steps, sched.r_max_steps, sched.d_max_steps]:
        r, d = sched.limits(t)
        assert 1.0 <= r <= sched.r_max and 0.0 <= d <= sched.d_max
    steps = sorted(range(0, 60000, 97))
    rs = [sched.limits(t)[0] for t in steps]
    ds = [sched.limits(t)[1] for t in steps]
    assert rs == sorted(rs) and ds == sorted(ds)
    assert sched.limits(10**9) == (sched.r_max, sched.d_max)


@pytest.mark.parametrize("bad", [dict(r_max=0.5), dict(d_max=-1.0), dict(warmup_steps=-1)])
def test_schedule_validation(bad):
    with pytest.raises(ValueError):
        RenormSchedule(**bad)
    with pytest.raises(ValueError):
        bnlab.BatchRenorm2d(3, **bad)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_warmup_is_exactly_batchnorm(dim):
    """r_max = 1, d_max = 0: outputs and gradients equal bnlab's and torch's BatchNorm."""
    c = SHAPES[dim][1]
    rn = CLASSES[dim](c)                                            # warm-up: step 0 < 5000
    bn = {1: bnlab.BatchNorm1d, 2: bnlab.BatchNorm2d, 3: bnlab.BatchNorm3d}[dim](c)
    tb = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}[dim](c)
    for step in range(3):
        x = torch.randn(SHAPES[dim]) * 3 + 1
        dy = torch.randn(SHAPES[dim])
        outs = []
        for layer in (rn, bn, tb):
            xi = x.clone().requires_grad_()
            y = layer(xi)
            y.backward(dy)
            outs.append((y.detach(), xi.grad, layer.weight.grad.clone(), layer.bias.grad.clone()))
            layer.weight.grad = layer.bias.grad = None
        for a, b in zip(outs[0], outs[1]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        for a, b in zip(outs[0], outs[2]):
            torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(rn.running_mean, tb.running_mean)


def test_no_running_stats_is_batchnorm():
    layer = bnlab.BatchRenorm2d(3, track_running_stats=False, warmup_steps=0, r_max_steps=0, d_max_steps=0)
    x = torch.randn(4, 3, 2, 2) * 2 + 5
    expect = torch.nn.functional.batch_norm(x, None, None, layer.weight, layer.bias, training=True)
    torch.testing.assert_close(layer(x), expect)
    torch.testing.assert_close(layer.eval()(x), expect)
    assert layer.current_limits() == (1.0, 0.0)


def test_functional_matches_module():
    torch.manual_seed(3)
    x = torch.randn(8, 4) * 2 + 1
    rm, rv = torch.randn(4), torch.rand(4) + 0.2
    layer = bnlab.BatchRenorm1d(4, warmup_steps=0, r_max_steps=0, d_max_steps=0, r_max=2.0, d_max=0.5)
    with torch.no_grad():
        layer.running_mean.copy_(rm)
        layer.running_var.copy_(rv)
    rm2, rv2 = rm.clone(), rv.clone()
    y = bnlab.functional.batch_renorm(x, rm2, rv2, layer.weight, layer.bias, training=True, r_max=2.0, d_max=0.5)
    torch.testing.assert_close(layer(x), y)
    torch.testing.assert_close(layer.running_mean, rm2)
    torch.testing.assert_close(layer.running_var, rv2)
    torch.testing.assert_close(bnlab.functional.batch_renorm(x, rm2, rv2, training=False),
                               torch.nn.functional.batch_norm(x, rm2, rv2, training=False))


def test_state_dict_is_batchnorm_and_carries_the_step():
    layer = bnlab.BatchRenorm2d(3, warmup_steps=1, r_max_steps=3, d_max_steps=3)
    tb = torch.nn.BatchNorm2d(3)
    assert list(layer.state_dict()) == list(tb.state_dict())
    for _ in range(2):
        layer(torch.randn(4, 3, 2, 2))
    other = bnlab.BatchRenorm2d(3, warmup_steps=1, r_max_steps=3, d_max_steps=3)
    other.load_state_dict(layer.state_dict())
    assert other.current_limits() == layer.current_limits() == pytest.approx((1.0 + 2.0 / 2, 5.0 / 2))
    tb.load_state_dict(layer.state_dict())            # and a torch BN loads it (same eval transform)
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(tb.eval()(x), layer.eval()(x))


def test_guard_and_policy_apply():
    layer = bnlab.BatchRenorm1d(3, warmup_steps=0, r_max_steps=0, d_max_steps=0)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.warns(RuntimeWarning):
        layer(torch.full((4, 3), float("nan")))
    assert layer.skipped_batches == 1
    for k, v in layer.state_dict().items():
        torch.testing.assert_close(v, before[k], equal_nan=True)
    layer.use_batch_stats = False                     # in training mode: the inference transform
    x = torch.randn(4, 3)
    torch.testing.assert_close(layer(x), torch.nn.functional.batch_norm(x, layer.running_mean, layer.running_var,
                                                                         layer.weight, layer.bias))


def test_gradcheck_affine_and_double_backward():
    """float64 gradcheck/gradgradcheck in γ, β (r, d do not depend on them) and in x when r_max=1, d_max=0."""
    torch.manual_seed(5)
    x = torch.randn(6, 3, 2, dtype=torch.float64) * 2 + 1
    rm, rv = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.1
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def f(w, b):
        return bnlab.functional.batch_renorm_train(x, w, b, 1e-5, rm, rv, 1.5, 0.5)[0]
    assert torch.autograd.gradcheck(f, (w, b))
    assert torch.autograd.gradgradcheck(f, (w, b))
    xg = x.clone().requires_grad_()

    def g(x, w, b):
        return bnlab.functional.batch_renorm_train(x, w, b, 1e-5, rm, rv, 1.0, 0.0)[0]
    assert torch.autograd.gradcheck(g, (xg, w, b))
    assert torch.autograd.gradgradcheck(g, (xg, w, b))
