"""The layers' direct eager path (``_BatchNorm.forward`` calling the operators itself).

A plain eager CPU call of a BatchNorm / BatchNormAct layer in its default policy skips the
frames between the module and the operator. Oracles: the general path (``_forward``, which
checks every argument in Python first) on an identical copy of the layer — same output bit
for bit, same buffers, same errors — and torch's own layers for the values.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import bnlab
from bnlab import kernels as K
from bnlab.nn import batchnorm as bn_mod

SHAPES = {1: (6, 5), 2: (4, 5, 3, 2), 3: (2, 5, 2, 3, 2)}
CLASSES = {1: bnlab.BatchNorm1d, 2: bnlab.BatchNorm2d, 3: bnlab.BatchNorm3d}
ACT = {1: bnlab.BatchNormAct1d, 2: bnlab.BatchNormAct2d, 3: bnlab.BatchNormAct3d}


@pytest.fixture
def general_calls(monkeypatch):
    """Counts the calls that took the general path (``bnlab.nn.batchnorm._forward``)."""
    calls = []
    real = bn_mod._forward

    def counting(module, input):
        calls.append(type(module).__name__)
        return real(module, input)

    monkeypatch.setattr(bn_mod, "_forward", counting)
    return calls


def _layers(make, dtype):
    torch.manual_seed(0)
    layer = make()
    with torch.no_grad():
        if layer.weight is not None:
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.uniform_(-0.5, 0.5)
        if layer.running_mean is not None:
            layer.running_mean.uniform_(-1, 1)
            layer.running_var.uniform_(0.5, 2)
    if dtype is not torch.bfloat16:
        layer.to(dtype)
    return layer, copy.deepcopy(layer)


def _inputs(dim, dtype, steps=3):
    g = torch.Generator().manual_seed(dim)
    return [(torch.randn(SHAPES[dim], generator=g, dtype=torch.float64) * 2 + 1).to(dtype) for _ in range(steps)]


CONFIGS = [
    dict(),
    dict(momentum=None),
    dict(track_running_stats=False),
    dict(affine=False),
]


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("act", [None, "relu", "leaky_relu", "silu"])
def test_direct_path_equals_general_path(dim, config, dtype, act, general_calls):
    make = (lambda: CLASSES[dim](5, **config)) if act is None else (lambda: ACT[dim](5, act=act, **config))
    direct, general = _layers(make, dtype)
    for mode in ("train", "eval"):
        direct.train(mode == "train")
        general.train(mode == "train")
        for x in _inputs(dim, dtype):
            xd = x.clone().requires_grad_(mode == "train")
            xg = x.clone().requires_grad_(mode == "train")
            before = len(general_calls)
            y = direct(xd)
            assert len(general_calls) == before                     # the direct path served it
            y_ref = general._forward_impl(xg)                       # the general path, checks first
            assert torch.equal(y, y_ref)
            if mode == "train":
                dy = torch.randn_like(y)
                y.backward(dy)
                y_ref.backward(dy)
                assert torch.equal(xd.grad, xg.grad)
            for (name, a), b in zip(direct.state_dict().items(), general.state_dict().values()):
                assert torch.equal(a, b), name


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_direct_path_values_match_torch(dim):
    ours, ref = CLASSES[dim](5), getattr(nn, f"BatchNorm{dim}d")(5)
    ref.load_state_dict(ours.state_dict())
    for x in _inputs(dim, torch.float32):
        torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    x = _inputs(dim, torch.float32, 1)[0]
    torch.testing.assert_close(ours(x), ref(x))


def _bad_eval_cases():
    x = torch.randn(4, 5, 3, 3)
    return [
        ("float64 running_mean", lambda m: setattr(m, "running_mean", m.running_mean.double()), x,
         bnlab.errors.BatchNormDTypeError),
        ("float64 weight", lambda m: setattr(m, "weight", nn.Parameter(m.weight.double())), x,
         bnlab.errors.BatchNormDTypeError),
        ("half weight, float32 input", lambda m: setattr(m, "weight", nn.Parameter(m.weight.half())), x,
         bnlab.errors.BatchNormDTypeError),
        ("negative eps", lambda m: setattr(m, "eps", -1e-3), x, ValueError),
        ("wrong num_features", lambda m: None, torch.randn(4, 6, 3, 3), bnlab.errors.BatchNormShapeError),
        ("integer input", lambda m: None, torch.ones(4, 5, 3, 3, dtype=torch.long),
         bnlab.errors.BatchNormUnsupportedDTypeError),
        ("meta running_mean", lambda m: setattr(m, "running_mean", torch.zeros(5, device="meta")), x, RuntimeError),
        ("running_var None", lambda m: setattr(m, "running_var", None), x, ValueError),
    ]


@pytest.mark.parametrize("case", _bad_eval_cases(), ids=lambda c: c[0])
def test_direct_eval_refusals_raise_the_general_paths_error(case):
    """The eval path calls the kernel unchecked; every refusal ends in bnlab's own error, nothing written."""
    _name, spoil, x, err = case
    layer = bnlab.BatchNorm2d(5).eval()
    spoil(layer)
    state = {k: v.clone() for k, v in layer.state_dict().items() if v.device.type != "meta"}
    with pytest.raises(err) as direct:
        layer(x)
    with pytest.raises(err) as general:
        layer._forward_impl(x)
    assert str(direct.value) == str(general.value)
    assert str(direct.value).startswith("batch_norm")                 # the checks' message, not the kernel's
    for k, v in state.items():
        assert torch.equal(layer.state_dict()[k], v)


def test_the_eval_kernel_refuses_what_check_input_refuses():
    """The guarantee the direct eval path rests on, asked of the operator itself."""
    x = torch.randn(2, 3, 4)
    ones = torch.ones(3)
    op = torch.ops.bnlab.bn_eval
    with pytest.raises(RuntimeError, match="mixed dtype"):
        op(x, ones.double(), ones, None, None, 1e-5, "identity", 0.0)
    with pytest.raises(RuntimeError, match="mixed dtype"):
        op(x.double(), ones.double(), ones.double(), ones, None, 1e-5, "identity", 0.0)
    with pytest.raises(RuntimeError, match="eps"):
        op(x, ones, ones, None, None, -1.0, "identity", 0.0)
    with pytest.raises(RuntimeError, match="elements"):
        op(x, torch.ones(4), ones, None, None, 1e-5, "identity", 0.0)
    with pytest.raises(RuntimeError):
        op(x, torch.ones(3, device="meta"), ones, None, None, 1e-5, "identity", 0.0)
    # what check_input accepts, the kernel accepts: float32 statistics beside a half input
    y = op(x.bfloat16(), torch.zeros(3), ones, ones, None, 0.0, "identity", 0.0)
    torch.testing.assert_close(y, x.bfloat16(), rtol=0, atol=0)


def test_direct_training_path_counts_a_guarded_batch(general_calls):
    layer = bnlab.BatchNorm2d(3)
    before = layer.running_mean.clone()
    x = torch.randn(4, 3, 2, 2)
    x[0, 1, 0, 0] = float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer(x)
        layer(x)
    assert general_calls == []
    assert layer.skipped_batches == 2
    assert int(layer.num_batches_tracked) == 0
    assert torch.equal(layer.running_mean, before)
    assert sum("non-finite" in str(w.message) for w in caught) == 1     # warned once


def test_other_policies_take_the_general_path(general_calls):
    x = torch.randn(4, 3, 2, 2)
    layer = bnlab.BatchNorm2d(3)
    layer.use_batch_stats = True
    layer.eval()(x)
    assert general_calls == ["BatchNorm2d"]
    fused = bnlab.BatchNormAct2d(3, act="leaky_relu", negative_slope=0.1, inplace=True)
    fused(x.clone())                                                 # In-Place ABN in training: general
    assert general_calls[-1] == "BatchNormAct2d"
    ghost = bnlab.GhostBatchNorm2d(3, virtual_batch_size=2)
    ghost(x)
    assert general_calls[-1] == "GhostBatchNorm2d"


def test_batchnormact_reads_its_activation_at_each_call(general_calls):
    """A mutated or replaced activation is honoured (the direct path reads the act module per call)."""
    layer = bnlab.BatchNormAct2d(3, act="leaky_relu", negative_slope=0.01).eval()
    bn = bnlab.BatchNorm2d(3).eval()
    x = torch.randn(4, 3, 2, 2) * 3
    layer.act.negative_slope = 0.5
    torch.testing.assert_close(layer(x), nn.functional.leaky_relu(bn(x), 0.5))
    assert general_calls == []
    layer.act = nn.GELU()                                            # not fusable: BN, then the module
    torch.testing.assert_close(layer(x), nn.functional.gelu(bn(x)))
    assert general_calls == ["BatchNormAct2d"]


def test_direct_path_counts_the_compiled_kernels(backend):
    layer = bnlab.BatchNorm2d(3)
    x = torch.randn(4, 3, 2, 2)
    K.reset_path_counts()
    layer(x)
    layer.eval()(x)
    want = ("compiled", "cpu") if backend == "compiled" else ("reference", "backend")
    assert K.path_counts() == {want: 2}


# ----------------------------------------------------------------------------- layers whose tensors are computed
@pytest.mark.parametrize("how", ["prune", "parametrize"])
@pytest.mark.parametrize("act", [None, "relu"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_pruned_and_parametrized_weights_are_used(how, act, mode):
    """torch.nn.utils.prune / parametrize replace ``weight`` by a computed tensor: both paths use it."""
    import torch.nn.utils.parametrize as parametrize
    import torch.nn.utils.prune as prune

    torch.manual_seed(3)
    ref = nn.BatchNorm2d(6)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2.0)
        ref.bias.uniform_(-1, 1)
    ours = bnlab.BatchNorm2d(6) if act is None else bnlab.BatchNormAct2d(6, act=act)
    ours.load_state_dict(ref.state_dict())

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    for m in (ref, ours):
        if how == "prune":
            prune.l1_unstructured(m, "weight", amount=0.5)
        else:
            parametrize.register_parametrization(m, "weight", Double())
        m.train(mode == "train")
    x = torch.randn(4, 6, 3, 3)
    want = ref(x) if act is None else torch.relu(ref(x))
    torch.testing.assert_close(ours(x), want)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)


@pytest.mark.parametrize("name", ["running_mean", "weight"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_two_dimensional_statistic_or_parameter_is_refused(name, mode):
    """A (1, C) tensor has C elements but is not (C,): refused in one line, nothing written."""
    layer = bnlab.BatchNorm2d(3).train(mode == "train")
    bad = torch.zeros(1, 12)[:, :3]                                  # stride 12: reading it as (C,) overruns
    if name == "weight":
        layer.weight = nn.Parameter(bad.clone())
    else:
        layer.running_mean = bad
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(bnlab.errors.BatchNormShapeError, match="1-D tensor of 3 elements"):
        layer(torch.randn(4, 3, 2, 2))
    for k, v in before.items():
        assert torch.equal(layer.state_dict()[k], v)
    with pytest.raises(RuntimeError, match="1-D"):                  # the kernels refuse it too
        torch.ops.bnlab.bn_eval(torch.randn(4, 3, 2, 2), bad, torch.ones(3), None, None, 1e-5, "identity", 0.0)


def test_a_meta_counter_beside_a_cpu_input_is_refused():
    """A CPU input beside a meta tensor dispatches to the fake kernel, which must not pass for a result."""
    layer = bnlab.BatchNorm2d(3)
    layer.num_batches_tracked = torch.zeros((), dtype=torch.long, device="meta")
    with pytest.raises(RuntimeError, match="meta"):
        layer(torch.randn(4, 3, 2, 2))


def test_wrapped_and_instance_overrides_take_the_general_path(general_calls):
    """An override made with functools.wraps (or torch.no_grad()(...)), or set on an instance, is honoured."""
    class NoGrad(bnlab.BatchNorm2d):
        _forward_impl = torch.no_grad()(bnlab.BatchNorm2d._forward_impl)

    assert NoGrad._direct is False
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    assert not NoGrad(3)(x).requires_grad

    layer = bnlab.BatchNorm2d(3)
    calls = []

    def refuse(input):
        calls.append(input.dim())
        raise ValueError("refused by the instance's own check")

    layer._check_input_dim = refuse
    with pytest.raises(ValueError, match="instance's own check"):
        layer(x)
    assert calls == [4]

    class Noted(bnlab.BatchNormAct2d):
        def _note_guard(self, ok):
            self.noted = True
            super()._note_guard(ok)

    assert Noted._direct is False
    noted = Noted(3)
    bad = torch.randn(4, 3, 2, 2)
    bad[0, 0, 0, 0] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        noted(bad)
    assert noted.noted and noted.skipped_batches == 1
