"""BatchNormAct1d/2d/3d: g(BN(x)) against torch's BatchNorm followed by the activation."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bnlab.nn.act import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d
from bnlab.nn.batchnorm import BatchNorm2d

from conftest import forbid_torch_batchnorm, tolerances

TORCH_ACT = {"relu": lambda: nn.ReLU(), "silu": lambda: nn.SiLU(), "identity": lambda: nn.Identity(),
             "leaky_relu": lambda: nn.LeakyReLU(0.2)}
SHAPES = {BatchNormAct1d: [(6, 3), (4, 3, 5)], BatchNormAct2d: [(4, 3, 5, 6)], BatchNormAct3d: [(2, 3, 3, 4, 2)]}
TORCH_BN = {BatchNormAct1d: nn.BatchNorm1d, BatchNormAct2d: nn.BatchNorm2d, BatchNormAct3d: nn.BatchNorm3d}
# (act, inplace) pairs that exist: in-place needs an invertible activation
CASES = [(a, False) for a in TORCH_ACT] + [("identity", True), ("leaky_relu", True)]


def _pair(cls, act, inplace, dtype=torch.float64, momentum=0.1, affine=True):
    ours = cls(3, act=act, negative_slope=0.2, inplace=inplace, momentum=momentum, affine=affine, dtype=dtype)
    if affine:
        with torch.no_grad():
            ours.weight.uniform_(0.5, 2.0)
            ours.bias.uniform_(-1.0, 1.0)
    ref = TORCH_BN[cls](3, momentum=momentum, affine=affine, dtype=dtype)
    ref.load_state_dict(ours.state_dict())
    return ours, nn.Sequential(ref, TORCH_ACT[act]())


def _grid():
    """Every class, shape and case in float64; the 2-D class in float32 too."""
    for cls, shapes in SHAPES.items():
        for shape in shapes:
            for act, inplace in CASES:
                yield cls, shape, act, inplace, torch.float64
                if cls is BatchNormAct2d:
                    yield cls, shape, act, inplace, torch.float32


def _compare_step(ours, ref, x, dy, tol):
    """One forward + backward of both; outputs, input and parameter gradients, buffers agree."""
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with forbid_torch_batchnorm():
        ya = ours(xa * 1.0)                                          # a non-leaf input: in-place may overwrite it
        ya.backward(dy)
    yb = ref(xb)
    yb.backward(dy)
    torch.testing.assert_close(ya, yb, **tol)
    torch.testing.assert_close(xa.grad, xb.grad, **tol)
    torch.testing.assert_close(ours.weight.grad, ref[0].weight.grad, **tol)
    torch.testing.assert_close(ours.bias.grad, ref[0].bias.grad, **tol)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref[0], name), **tol)
    ours.zero_grad(), ref.zero_grad()


@pytest.mark.parametrize("cls,shape,act,inplace,dtype", list(_grid()))
def test_matches_torch_bn_then_act(cls, shape, act, inplace, dtype):
    ours, ref = _pair(cls, act, inplace, dtype)
    x = (torch.randn(shape) * 2 + 0.5).to(dtype)
    dy = torch.randn(shape, dtype=dtype)
    tol = tolerances(dtype)
    for _ in range(2):                                               # running statistics move twice
        _compare_step(ours, ref, x, dy, tol)
    ours.eval(), ref.eval()
    _compare_step(ours, ref, x, dy, tol)                             # eval with gradients
    with torch.no_grad():
        yb = ref(x)
        with forbid_torch_batchnorm():
            ya = ours(x.clone())
    torch.testing.assert_close(ya, yb, **tol)


@pytest.mark.parametrize("act,inplace", CASES)
def test_channels_last_and_no_affine_cumulative(act, inplace):
    ours, ref = _pair(BatchNormAct2d, act, inplace, momentum=None, affine=False)
    x = torch.randn(4, 3, 5, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa * 1.0), ref(xb)
    assert ya.is_contiguous(memory_format=torch.channels_last)
    (ya * ya).sum().backward()
    (yb * yb).sum().backward()
    torch.testing.assert_close(ya, yb)
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(ours.running_var, ref[0].running_var)


@pytest.mark.parametrize("act,inplace", CASES)
def test_gradcheck_float64(act, inplace):
    layer = BatchNormAct2d(3, act=act, negative_slope=0.2, inplace=inplace, dtype=torch.float64)
    x = torch.randn(3, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):                                                  # clone: in-place overwrites its input
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x.clone(),))

    assert torch.autograd.gradcheck(f, (x, w, b))
    if not inplace:                                                  # In-Place ABN is once differentiable
        assert torch.autograd.gradgradcheck(f, (x, w, b))


class TimmStyleBatchNormAct2d(nn.BatchNorm2d):
    """The layout of timm's BatchNormAct2d: a torch BN with ``drop`` and ``act`` children."""

    def __init__(self, num_features, act_layer=nn.ReLU):
        super().__init__(num_features)
        self.drop = nn.Identity()
        self.act = act_layer(inplace=True)

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))


def test_state_dict_round_trip_with_timm_layout():
    timm_like = TimmStyleBatchNormAct2d(5).train()
    x = torch.randn(4, 5, 3, 3) * 3 + 1
    for _ in range(3):
        timm_like(x)                                                 # non-trivial statistics
    with torch.no_grad():
        timm_like.weight.uniform_(0.5, 2.0)
        timm_like.bias.uniform_(-1.0, 1.0)
    sd = timm_like.state_dict()
    ours = BatchNormAct2d(5, act="relu")
    assert list(ours.state_dict()) == list(sd)                       # same keys, same order
    ours.load_state_dict(sd, strict=True)
    ours.eval(), timm_like.eval()
    torch.testing.assert_close(ours(x), timm_like(x.clone()))
    back = TimmStyleBatchNormAct2d(5)
    back.load_state_dict(ours.state_dict(), strict=True)
    for k, v in back.state_dict().items():
        torch.testing.assert_close(v, sd[k])
    # a separate BN → ReLU pair holds the same state
    pair = nn.Sequential(nn.BatchNorm2d(5), nn.ReLU())
    pair[0].load_state_dict(ours.state_dict(), strict=True)
    torch.testing.assert_close(pair.eval()(x), ours(x))
    to_torch = ours.to_torch()
    assert type(to_torch[0]) is nn.BatchNorm2d and type(to_torch[1]) is nn.ReLU
    torch.testing.assert_close(to_torch(x), ours(x))


def test_is_a_batchnorm_layer_and_repr():
    m = BatchNormAct2d(4, act="leaky_relu", negative_slope=0.1, inplace=True)
    assert isinstance(m, BatchNorm2d)
    assert "inplace=True" in repr(m) and "LeakyReLU(negative_slope=0.1)" in repr(m)
    assert BatchNormAct2d(4, act=nn.SiLU).act.__class__ is nn.SiLU


def _saved_activation_bytes(model, x):
    """Distinct storages at least as large as ``x`` that autograd keeps after one forward."""
    seen = {}

    def pack(t):
        if t.numel() >= x.numel():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


def test_inplace_saves_at_most_half_of_torch_bn_act():
    conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    x = torch.randn(4, 8, 16, 16, requires_grad=True)
    torch_pair = nn.Sequential(conv, nn.BatchNorm2d(8), nn.LeakyReLU(0.1))
    ours = nn.Sequential(conv, BatchNormAct2d(8, act="leaky_relu", negative_slope=0.1, inplace=True))
    fused = nn.Sequential(conv, BatchNormAct2d(8, act="leaky_relu", negative_slope=0.1))
    conv_only = _saved_activation_bytes(conv, x)                     # the conv keeps its input
    base = _saved_activation_bytes(torch_pair, x) - conv_only        # BN's input + the act's output
    inplace = _saved_activation_bytes(ours, x) - conv_only
    not_inplace = _saved_activation_bytes(fused, x) - conv_only
    act_bytes = x.numel() * 4
    assert base == 2 * act_bytes
    assert inplace <= 0.5 * base and not_inplace <= 0.5 * base


def test_inplace_overwrites_its_input():
    m = BatchNormAct2d(3, act="identity", inplace=True)
    x = torch.randn(4, 3, 2, 2) * 5 + 3
    h = x.clone()
    y = m(h)
    assert y.data_ptr() == h.data_ptr()
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)


def test_errors_are_one_clear_line():
    with pytest.raises(ValueError, match="invertible activation"):
        BatchNormAct2d(3, act="relu", inplace=True)
    with pytest.raises(ValueError, match="invertible activation"):
        BatchNormAct2d(3, act="silu", inplace=True)
    with pytest.raises(ValueError, match="invertible activation"):
        BatchNormAct2d(3, act="leaky_relu", negative_slope=0.0, inplace=True)
    with pytest.raises(ValueError, match="unknown act 'gelu'"):
        BatchNormAct2d(3, act="gelu")
    m = BatchNormAct2d(3, act="leaky_relu", inplace=True)
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        m(torch.randn(2, 3, 2, 2, requires_grad=True))
    with torch.no_grad():
        m.weight[1] = 0.0
    with pytest.raises(ValueError, match="γ = 0"):
        m(torch.randn(2, 3, 2, 2, requires_grad=True) * 1.0)
    with pytest.raises(ValueError, match="expected 4D input"):
        BatchNormAct2d(3)(torch.randn(2, 3))


def test_replaced_activation_runs_unfused():
    m = BatchNormAct2d(3)
    m.act = nn.GELU()
    ref = nn.Sequential(nn.BatchNorm2d(3), nn.GELU())
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(m(x), ref(x))


@pytest.mark.parametrize("act,inplace", [("relu", False), ("silu", False), ("leaky_relu", True)])
def test_torchscript_fx_export_match_torch(act, inplace, tmp_path):
    ours, ref = _pair(BatchNormAct2d, act, inplace, dtype=torch.float32)
    scripted = torch.jit.script(copy.deepcopy(ours))
    path = tmp_path / "m.pt"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    for _ in range(2):                                               # training steps update the buffers
        torch.testing.assert_close(loaded(x.clone()), ref(x))
    torch.testing.assert_close(loaded.running_var, ref[0].running_var)
    assert int(loaded.num_batches_tracked) == 2
    loaded.eval(), ref.eval()
    torch.testing.assert_close(loaded(x.clone()), ref(x))
    ours.load_state_dict(ref[0].state_dict())
    ours.eval()
    chain = nn.Sequential(nn.Conv2d(3, 3, 1), ours)
    chain_ref = nn.Sequential(chain[0], ref)
    torch.testing.assert_close(torch.fx.symbolic_trace(chain)(x), chain_ref(x))
    torch.testing.assert_close(torch.export.export(chain, (x,)).module()(x), chain_ref(x))


def test_torchscript_refuses_an_unfusable_act():
    m = BatchNormAct2d(3)
    m.act = nn.GELU()
    with pytest.raises(torch.jit.Error, match="TorchScript needs a fusable act"):
        torch.jit.script(m)(torch.randn(2, 3, 2, 2))
