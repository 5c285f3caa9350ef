"""The lab's models: shapes, the paper's MNIST-net specification, BN-Inception's table."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import bnlab
from bnlab.lab.models import BNInception, MnistMLP, build_model, count_params, model_names, norm_factory
from bnlab.lab.models.inception import INCEPTION_TABLE


pytestmark = pytest.mark.usefixtures("reference_kernels")


@pytest.mark.parametrize("name,in_shape,classes", [
    ("mnist-mlp", (1, 28, 28), 10),
    ("seed-net", (3, 32, 32), 10),
    ("seed-net", (1, 28, 28), 10),
    ("vgg-small", (3, 32, 32), 10),
    ("vgg-small", (1, 28, 28), 7),
])
@pytest.mark.parametrize("norm", ["batch", "none", "torch"])
def test_output_shape_and_backward(name, in_shape, classes, norm):
    model = build_model(name, norm, in_shape=in_shape, num_classes=classes)
    x = torch.randn(4, *in_shape)
    out = model(x)
    assert out.shape == (4, classes)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_norm_factory_uses_bnlab_layers():
    model = build_model("vgg-small", "batch", in_shape=(3, 32, 32))
    kinds = {type(m) for m in model.modules() if "Norm" in type(m).__name__}
    assert kinds == {bnlab.BatchNorm2d}
    assert norm_factory("none", 2) is None
    with pytest.raises(ValueError, match="unknown norm"):
        norm_factory("no-such-norm", 2)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("no-such-model")
    assert set(model_names()) == {"mnist-mlp", "seed-net", "vgg-small", "bn-inception"}


def test_mnist_mlp_matches_the_paper():
    torch.manual_seed(0)
    plain = MnistMLP(None)
    bn = MnistMLP(norm_factory("batch", 1))
    # 784-100-100-100-10
    assert [(l.in_features, l.out_features) for l in plain.linears] == [(784, 100), (100, 100), (100, 100)]
    assert (plain.head.in_features, plain.head.out_features) == (100, 10)
    # no bias before BN (beta replaces it); the plain net keeps its biases, zero at start
    assert all(l.bias is None for l in bn.linears)
    assert all(torch.equal(l.bias, torch.zeros(100)) for l in plain.linears)
    # weights ~ N(0, 0.01^2): sample moments over 98,400 weights
    w = torch.cat([l.weight.flatten() for l in plain.linears])
    assert abs(w.mean().item()) < 2e-4 and abs(w.std().item() - 0.01) < 2e-4
    # the sigmoid inputs it reports are what its forward feeds the sigmoids
    x = torch.rand(8, 1, 28, 28)
    logits, pre = bn.forward_with_preacts(x)
    h = x.flatten(1)
    for lin, norm, z in zip(bn.linears, bn.norms, pre):
        h_next = torch.sigmoid(norm(lin(h)))
        assert z.shape == (8, 100)
        h = h_next
    torch.testing.assert_close(bn.head(h), logits)


def _table_param_count(num_classes: int = 1000) -> tuple[int, list[int]]:
    """Independent count from the appendix table: conv k*k*cin*cout (no bias) + BN 2*cout."""
    def conv(k, cin, cout):
        return k * k * cin * cout + 2 * cout

    total = conv(7, 3, 64) + conv(1, 64, 64) + conv(3, 64, 192)
    cin, outs = 192, []
    for _name, n1, n3r, n3, nd3r, nd3, _pool, proj, _stride in INCEPTION_TABLE:
        total += (conv(1, cin, n1) if n1 else 0) + conv(1, cin, n3r) + conv(3, n3r, n3)
        total += conv(1, cin, nd3r) + conv(3, nd3r, nd3) + conv(3, nd3, nd3)
        total += conv(1, cin, proj) if proj else 0
        cin = n1 + n3 + nd3 + (proj if proj else cin)
        outs.append(cin)
    return total + cin * num_classes + num_classes, outs


def test_bn_inception_224_and_parameter_count():
    torch.manual_seed(0)
    model = BNInception(norm_factory("batch", 2)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000)
    expected, outs = _table_param_count()
    assert count_params(model) == expected == 11_285_224  # the paper's text says 13.6M
    # module outputs: the table's 256/320/576 ... 1024 where its branch widths agree
    assert outs == [256, 320, 576, 576, 576, 608, 608, 1056, 1024, 1024]
    assert [m.out_channels for m in model.inception.values()] == outs
    n_bn = sum(isinstance(m, bnlab.BatchNorm2d) for m in model.modules())
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert n_bn == n_conv  # BN after every convolution


def test_bn_inception_grid_sizes():
    model = BNInception(None, num_classes=10).eval()
    x = torch.randn(1, 3, 224, 224)
    sizes = {}
    with torch.no_grad():
        x = model.stem(x)
        sizes["stem"] = tuple(x.shape[1:])
        for name, m in model.inception.items():
            x = m(x)
            sizes[name] = tuple(x.shape[2:])
    assert sizes["stem"] == (192, 28, 28)
    assert sizes["3b"] == (28, 28) and sizes["3c"] == (14, 14)
    assert sizes["4d"] == (14, 14) and sizes["4e"] == (7, 7) and sizes["5b"] == (7, 7)


# ---- noisy BN (Santurkar et al. 2018) ---------------------------------------------------------
from bnlab.lab.models.noisy import (  # noqa: E402
    NoisyBatchNorm2d, hold_noise, noise_expectation, resample_noise, sample_noise,
)


def _implied_noise(layer, x1, x2):
    """(s, m) with y = s·BN(x) + m elementwise, from two inputs under one held draw."""
    plain = nn.BatchNorm2d(layer.num_features).double()
    with torch.no_grad(), hold_noise(layer):
        z1, z2 = plain(x1), plain(x2)
        y1, y2 = layer(x1), layer(x2)
    s = (y1 - y2) / (z1 - z2)
    return s, y1 - s * z1


def test_noisy_bn_perturbs_each_activation_of_each_sample_iid():
    torch.manual_seed(0)
    layer = NoisyBatchNorm2d(4)
    x1, x2 = torch.randn(64, 4, 3, 3, dtype=torch.float64), torch.randn(64, 4, 3, 3, dtype=torch.float64)
    layer.double()
    layer(x1)  # a first training step draws the noise that hold_noise then keeps
    s, m = _implied_noise(layer, x1, x2)
    # one channel, different samples (and positions) get different draws: not one (s, m) per channel
    assert float(s[:, 0].std()) > 0.05 and float(m[:, 0].std()) > 0.03
    # within one step the shifts of a layer lie in a window of width 0.2 around one μ, the scales
    # scatter by 0.1 around one σ ∈ [1, 1.25]
    assert float(m.max() - m.min()) <= 0.2 + 1e-9
    assert 0.9 < float(s.mean()) < 1.35 and abs(float(s.std()) - 0.1) < 0.02


def test_noisy_bn_eval_applies_the_noise_expectation():
    torch.manual_seed(0)
    layer, plain = NoisyBatchNorm2d(3), nn.BatchNorm2d(3)
    x = torch.randn(16, 3, 4, 4) * 2 + 1
    layer(x), plain(x)  # same running statistics
    layer.eval(), plain.eval()
    # training saw E[s] = 1.125 and E[m] = 0: evaluation folds them into γ, β
    torch.testing.assert_close(layer(x), 1.125 * plain(x), rtol=2e-5, atol=2e-5)


# ---- the claims' small CNN ------------------------------------------------------------------------
from bnlab.lab.models import layer_labels, small_cnn  # noqa: E402


@pytest.mark.parametrize("norm", [bnlab.BatchNorm2d, nn.BatchNorm2d])
def test_small_cnn_has_no_norm_on_1x1_features(norm):
    # BN on the hidden FC layer's (N, 64, 1, 1) features maps a batch of two to ±γ: at batch 2 that
    # layer alone decides the batch-size experiment, so BN sits after the convolutions only
    model = small_cnn(norm, widths=(4, 8), hidden=16)
    seen = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
             for m in model.modules() if "norm" in type(m).__name__.lower()]
    model(torch.randn(2, 1, 28, 28))
    for h in hooks:
        h.remove()
    assert seen == [(2, 4, 28, 28), (2, 8, 14, 14)]


def test_noise_distribution_matches_santurkar():
    # one step: s_i ~ N(σ, 0.1²), m_i ~ U(μ − 0.1, μ + 0.1), i.i.d. over 200,000 elements
    s, m = sample_noise((1000, 2, 10, 10), mu=0.3, sigma=1.2, seed=1, dtype=torch.float64)
    assert s.shape == m.shape == (1000, 2, 10, 10)
    assert float(s.mean()) == pytest.approx(1.2, abs=2e-3) and float(s.std()) == pytest.approx(0.1, rel=0.01)
    assert 0.2 <= float(m.min()) and float(m.max()) <= 0.4
    assert float(m.var()) == pytest.approx(0.2**2 / 12, rel=0.02)
    assert torch.equal(sample_noise((3, 4), 0.0, 1.0, 7)[0], sample_noise((3, 4), 0.0, 1.0, 7)[0])
    # over steps μ ~ U(−0.5, 0.5), σ ~ U(1, 1.25): E[s] = 1.125, E[m] = 0
    assert noise_expectation() == (1.125, 0.0)
    layer = NoisyBatchNorm2d(1)
    means = []
    for _ in range(400):
        layer.resample()
        means.append(layer.draw[:2])
    mu, sigma = torch.tensor(means, dtype=torch.float64).T
    assert -0.5 <= float(mu.min()) and float(mu.max()) <= 0.5 and 1.0 <= float(sigma.min()) <= 1.25
    assert float(mu.mean()) == pytest.approx(0.0, abs=0.05) and float(sigma.mean()) == pytest.approx(1.125, abs=0.01)


def test_noisy_bn_is_bn_plus_a_new_draw_every_training_step():
    torch.manual_seed(0)
    noisy, plain = NoisyBatchNorm2d(3), nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    y = noisy(x)
    mu, sigma, seed = noisy.draw
    s, m = sample_noise(tuple(x.shape), mu, sigma, seed)
    torch.testing.assert_close(y, plain(x) * s + m, rtol=2e-5, atol=2e-5)
    with hold_noise(noisy):
        torch.testing.assert_close(noisy(x), y, rtol=0, atol=0)  # same draw reused
    assert not torch.equal(noisy(x), y)  # outside hold_noise: a new draw per training forward
    resample_noise(noisy)
    assert noisy.draw[2] != seed
    assert "noise_scale" not in noisy.state_dict() and set(noisy.state_dict()) == set(plain.state_dict())
    plain.load_state_dict(noisy.state_dict())
    quiet = NoisyBatchNorm2d(3, eval_noise="none")
    quiet.load_state_dict(noisy.state_dict())
    quiet.eval(), plain.eval()
    torch.testing.assert_close(quiet(x), plain(x), rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="eval_noise"):
        NoisyBatchNorm2d(3, eval_noise="sometimes")


def test_small_cnn_layers_and_readable_names():
    model = small_cnn(None, widths=(4, 8), hidden=16, in_shape=(3, 32, 32), num_classes=7)
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 7)
    assert list(layer_labels(model).values()) == ["conv 1", "conv 2", "fc 1", "fc 2"]
    everywhere = small_cnn(bnlab.BatchNorm2d, widths=(4, 8), hidden=16, fc_norm=bnlab.BatchNorm1d)
    assert [type(m).__name__ for m in everywhere if "Norm" in type(m).__name__] == [
        "BatchNorm2d", "BatchNorm2d", "BatchNorm1d"]                     # opt-in BN on (N, hidden)
    assert everywhere[9].bias is None                                      # the FC before it drops its bias
    with pytest.raises(ValueError, match="activation"):
        small_cnn(None, activation="tanh")
