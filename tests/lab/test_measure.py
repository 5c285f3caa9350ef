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


# ---- moving averages of BN statistics, raw and bias-corrected ------------------------------------
from bnlab.lab.measure import MovingAverages, bn_layers  # noqa: E402


def _bn_net(momentum):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, momentum=momentum), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 5), nn.BatchNorm1d(5, momentum=momentum))


@pytest.mark.parametrize("momentum", [0.1, 0.01])
def test_moving_averages_match_torch_running_stats_and_the_weighted_mean(momentum):
    model = _bn_net(momentum)
    tracker = MovingAverages(model, momenta=(momentum, 0.5))
    g = torch.Generator().manual_seed(1)
    means = []  # per batch: the conv BN's batch mean (the oracle's input)
    for t in range(30):
        x = torch.randn(8, 1, 6, 6, generator=g) * (1 + t / 10) + t / 5   # a drifting input
        model(x)
        means.append(model[0](x).detach().double().mean((0, 2, 3)))
    model.eval()
    model(torch.randn(4, 1, 6, 6))          # eval forwards are not batches of the average
    tracker.remove()
    model(torch.randn(4, 1, 6, 6))
    assert tracker.steps == 30
    for name, layer in bn_layers(model):    # identity: the raw average is torch's running average
        mean, var = tracker.stats(momentum, corrected=False)[name]
        torch.testing.assert_close(mean.float(), layer.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var.float(), layer.running_var, rtol=1e-5, atol=1e-6)
    # the bias-corrected mean is the normalized weighted mean Σ w_k μ_k / Σ w_k, w_k = m (1 − m)^(T − k)
    w = np.array([momentum * (1 - momentum) ** (29 - k) for k in range(30)])
    expect = (w[:, None] * torch.stack(means).numpy()).sum(0) / w.sum()
    np.testing.assert_allclose(tracker.stats(momentum, corrected=True)["1"][0].numpy(), expect, rtol=1e-9)


def test_bias_correction_removes_the_initial_value_artifact():
    # a network that never changes: its population statistics are those of the data. Torch's average at
    # momentum 0.001 after 300 batches still weighs its initial 0 / 1 by 0.999^300 ≈ 0.74 (so does
    # momentum 0.01 after 30), so a "stale moving average" shows up although nothing moved; the
    # bias-corrected average does not.
    model = nn.Sequential(nn.BatchNorm1d(4, momentum=0.01))
    tracker = MovingAverages(model, momenta=(0.01,))
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        model(3.0 + 2.0 * torch.randn(256, 4, generator=g))
    layer = model[0]
    assert float(layer.running_mean.mean()) == pytest.approx(3.0 * (1 - 0.99**30), rel=0.02)  # ≈ 0.78
    mean, var = tracker.stats(0.01, corrected=True)["0"]
    assert torch.allclose(mean, torch.full((4,), 3.0, dtype=mean.dtype), atol=0.05)
    assert torch.allclose(var, torch.full((4,), 4.0, dtype=var.dtype), rtol=0.05)
    copy_ = nn.Sequential(nn.BatchNorm1d(4))
    tracker.load_into(copy_, 0.01, corrected=True)
    torch.testing.assert_close(copy_[0].running_mean, mean.float())
    with pytest.raises(KeyError, match="momentum"):
        tracker.stats(0.2)


# ---- distribution shift of layer inputs -------------------------------------------------------------
from bnlab.lab.measure import distribution_shift, layer_input_stats  # noqa: E402


def test_distribution_shift_of_a_known_affine_change():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Identity(), nn.Conv2d(2, 2, 1))
    x = torch.randn(64, 2, 5, 5, dtype=torch.float64)
    model.double()
    a = layer_input_stats(model, x, ["1"])
    b = layer_input_stats(model, 3 * x + 0.5, ["1"])        # every channel: mean + 0.5, std × 3
    m, s = a["1"]
    torch.testing.assert_close(m, x.mean((0, 2, 3)))
    torch.testing.assert_close(s, x.transpose(0, 1).reshape(2, -1).std(1, correction=0))
    # (mean |Δm| + mean |Δs|) / mean s with Δm = 2m + 0.5 and Δs = 2s
    expect = float((2 * m + 0.5).abs().mean() / s.mean() + 2.0)
    assert distribution_shift(a, b) == pytest.approx(expect, rel=1e-9)
    assert distribution_shift(a, a) == 0.0
    with pytest.raises(KeyError, match="unknown module"):
        layer_input_stats(model, x, ["nope"])


def test_distribution_shift_ignores_constant_channels():
    # a channel that is constant on the probe (std 0) must not turn a small move into an infinite shift
    a = {"l": (torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64))}
    b = {"l": (torch.tensor([0.1, 1.0], dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64))}
    assert distribution_shift(a, b) == pytest.approx(0.05 / 1.0)


def test_layer_input_stats_in_training_mode_leaves_running_statistics_alone():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer_input_stats(model, torch.randn(8, 1, 6, 6), ["3"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
