"""Oracles for the lab's measurements: closed forms on a quadratic and a deep linear net."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bnlab.lab.measure import internal_covariate_shift, loss_closure, named_params, probe_along_gradient
from bnlab.lab.measure.landscape import quadratic_closure


def _spd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return a @ a.T / n + 0.1 * torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize("lr", [0.01, 0.3])
def test_landscape_probe_matches_quadratic_closed_form(lr):
    n = 6
    h = _spd(n, 1)
    w_star = torch.randn(n, dtype=torch.float64)
    w = torch.randn(n, dtype=torch.float64)
    probe = probe_along_gradient(quadratic_closure(h, w_star), {"w": w}, lr)
    g = h @ (w - w_star)
    loss0 = 0.5 * (w - w_star) @ h @ (w - w_star)
    for eta, loss, change in zip(probe.etas, probe.losses, probe.grad_changes):
        # L(w − ηg) = L(w) − η‖g‖² + ½η² gᵀHg ;  ‖∇L(w − ηg) − ∇L(w)‖ = η‖Hg‖
        assert loss == pytest.approx(float(loss0 - eta * g @ g + 0.5 * eta**2 * g @ h @ g), rel=1e-10)
        assert change == pytest.approx(float(eta * torch.linalg.norm(h @ g)), rel=1e-10)
    assert probe.etas[0] == pytest.approx(0.5 * lr) and probe.etas[-1] == pytest.approx(4 * lr)
    beta = float(torch.linalg.norm(h @ g) / torch.linalg.norm(g))
    assert probe.beta == pytest.approx(beta, rel=1e-10)
    assert probe.beta <= float(torch.linalg.eigvalsh(h)[-1]) * (1 + 1e-12)
    assert probe.loss_range[0] <= probe.loss <= probe.loss_range[1]


def test_landscape_probe_leaves_model_and_running_stats_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3))
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = probe_along_gradient(loss_closure(model, nn.functional.cross_entropy, x, y), named_params(model), 0.1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the probe's L(w) is the training-mode loss of the model itself
    assert probe.loss == pytest.approx(float(nn.functional.cross_entropy(model(x), y).detach()), rel=1e-6)


def _deep_linear(w1: np.ndarray, w2: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Gradient of ½‖W₂W₁x − y‖² w.r.t. W₂ (NumPy derivation): (W₂W₁x − y)(W₁x)ᵀ."""
    h = w1 @ x
    return (w2 @ h - y) @ h.T


def test_ics_matches_deep_linear_numpy_derivation():
    torch.manual_seed(3)
    x, y = torch.randn(4, 10, dtype=torch.float64), torch.randn(3, 10, dtype=torch.float64)
    params = {"w1": torch.randn(5, 4, dtype=torch.float64), "w2": torch.randn(3, 5, dtype=torch.float64)}
    nxt = {k: v + 0.1 * torch.randn_like(v) for k, v in params.items()}

    def loss_at(p):
        return 0.5 * ((p["w2"] @ p["w1"] @ x - y) ** 2).sum()

    first, second = internal_covariate_shift(loss_at, params, nxt, ["w1", "w2"])
    # layer 1 has no layer before it: G' = G exactly
    assert first.l2 == 0.0 and first.cosine == pytest.approx(1.0)
    xs, ys = x.numpy(), y.numpy()
    g = _deep_linear(params["w1"].numpy(), params["w2"].numpy(), xs, ys)
    gp = _deep_linear(nxt["w1"].numpy(), params["w2"].numpy(), xs, ys)   # W₁ at t+1, W₂ at t
    assert second.l2 == pytest.approx(np.linalg.norm(g - gp), rel=1e-10)
    assert second.cosine == pytest.approx((g * gp).sum() / np.linalg.norm(g) / np.linalg.norm(gp), rel=1e-10)
    assert second.grad_norm == pytest.approx(np.linalg.norm(g), rel=1e-10)


def test_ics_is_zero_when_nothing_moves():
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    p = named_params(model)
    pts = internal_covariate_shift(loss_closure(model, nn.functional.cross_entropy, x, y), p, p,
                                   ["0.weight", ["2.weight", "2.bias"]])
    assert [pt.l2 for pt in pts] == [0.0, 0.0]
    assert pts[1].layer == "2.weight, 2.bias"
    with pytest.raises(KeyError):
        internal_covariate_shift(loss_closure(model, nn.functional.cross_entropy, x, y), p, p, ["nope"])
