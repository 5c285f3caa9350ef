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
