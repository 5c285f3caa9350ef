"""torch.fx.symbolic_trace of a bare bnlab layer (the layer itself is the traced root).

Oracle: the eager layer, run on the same input from the same state — outputs, gradients
of the input and of γ/β, every buffer (the GraphModule updates its own running
statistics in training mode as the layer does) — in training and in evaluation mode.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.fx
from torch import nn

import bnlab
from bnlab.nn.act import graph_batch_norm_act
from bnlab.nn.batchnorm import graph_batch_norm
from bnlab.nn.ghost import graph_ghost_batch_norm

SHAPES = {1: (6, 4, 5), 2: (6, 4, 5, 3), 3: (4, 4, 3, 2, 3)}


def _layer(kind: str, dim: int, **kw) -> nn.Module:
    if kind == "bn":
        m = getattr(bnlab, f"BatchNorm{dim}d")(4, **kw)
    elif kind == "ghost":
        m = getattr(bnlab, f"GhostBatchNorm{dim}d")(4, virtual_batch_size=4, **kw)
    elif kind.startswith("act"):
        act = kind.split("-", 1)[1]
        extra = dict(inplace=True, negative_slope=0.2) if act == "leaky_relu" else {}
        m = getattr(bnlab, f"BatchNormAct{dim}d")(4, act=act, **extra, **kw)
    else:
        raise ValueError(kind)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if m.running_mean is not None:
            m.running_mean.copy_(torch.rand(4, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(4, generator=g) + 0.5)
        if m.weight is not None:
            m.weight.copy_(torch.rand(4, generator=g) + 0.5)
        if m.bias is not None:
            m.bias.copy_(torch.rand(4, generator=g) - 0.5)
    return m


def _run(m: nn.Module, x: torch.Tensor, dy: torch.Tensor):
    """One call: output, gradients (input, parameters) and the state afterwards."""
    leaf = x.clone().requires_grad_()
    y = m(leaf * 1.0)                                                # not a leaf (in-place layers need that)
    grads = torch.autograd.grad(y, [leaf, *m.parameters()], dy) if y.requires_grad else ()
    return y.detach(), grads, {k: v.clone() for k, v in m.state_dict().items()}


def _assert_same(a, b):
    ya, ga, sa = a
    yb, gb, sb = b
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    assert len(ga) == len(gb)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=0, atol=0)
    assert sorted(sa) == sorted(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


KINDS = ["bn", "ghost", "act-relu", "act-silu", "act-leaky_relu"]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_bare_layer_traces_and_matches_eager(kind, dim, train):
    eager = _layer(kind, dim).train(train)
    gm = torch.fx.symbolic_trace(copy.deepcopy(eager))
    torch.manual_seed(0)
    x = torch.randn(SHAPES[dim]) * 2 + 1
    dy = torch.randn(SHAPES[dim])
    for _ in range(2):                                               # the second step sees the updated buffers
        _assert_same(_run(gm, x, dy), _run(eager, x, dy))
    if train:
        assert int(gm.num_batches_tracked) == int(eager.num_batches_tracked) > 0


@pytest.mark.parametrize("kind,fn", [("bn", graph_batch_norm), ("ghost", graph_ghost_batch_norm),
                                     ("act-relu", graph_batch_norm_act)])
def test_graph_is_one_bnlab_node_on_the_modules_own_tensors(kind, fn):
    gm = torch.fx.symbolic_trace(_layer(kind, 2))
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert [n.target for n in calls] == [fn]
    attrs = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    assert attrs == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    assert set(gm.state_dict()) == attrs
    assert {n for n, _ in gm.named_parameters()} == {"weight", "bias"}
    # the GraphModule's own buffers are updated, not the traced layer's
    layer = _layer(kind, 2)
    gm = torch.fx.symbolic_trace(copy.deepcopy(layer))
    gm(torch.randn(6, 4, 3, 3))
    assert int(gm.num_batches_tracked) == (2 if kind == "ghost" else 1)
    torch.testing.assert_close(layer.num_batches_tracked, torch.tensor(0))


@pytest.mark.parametrize("flags", [dict(affine=False), dict(track_running_stats=False), dict(momentum=None),
                                   dict(bias=False)], ids=str)
def test_flags_follow_eager(flags):
    eager = _layer("bn", 2, **flags)
    gm = torch.fx.symbolic_trace(copy.deepcopy(eager))
    x, dy = torch.randn(6, 4, 5, 3), torch.randn(6, 4, 5, 3)
    for _ in range(2):
        _assert_same(_run(gm, x, dy), _run(eager, x, dy))


def test_policy_overrides_are_resolved_at_trace_time():
    eager = _layer("bn", 2).eval()
    eager.use_batch_stats = True                                     # batch statistics in eval, no update
    gm = torch.fx.symbolic_trace(copy.deepcopy(eager))
    x, dy = torch.randn(6, 4, 5, 3), torch.randn(6, 4, 5, 3)
    _assert_same(_run(gm, x, dy), _run(eager, x, dy))


def test_replaced_activation_is_a_module_call_after_the_bn_node():
    eager = _layer("act-relu", 2)
    eager.act = nn.Hardtanh()
    gm = torch.fx.symbolic_trace(copy.deepcopy(eager))
    assert [n.op for n in gm.graph.nodes if n.op.startswith("call")] == ["call_function", "call_module"]
    x, dy = torch.randn(6, 4, 5, 3), torch.randn(6, 4, 5, 3)
    _assert_same(_run(gm, x, dy), _run(eager, x, dy))


def test_graph_raises_what_eager_raises():
    gm = torch.fx.symbolic_trace(_layer("bn", 2))
    with pytest.raises(ValueError, match="expected 4D input"):
        gm(torch.randn(6, 4, 5))
    with pytest.raises(ValueError, match="should contain 3 elements not 4"):
        gm(torch.randn(6, 3, 5, 5))
    gm = torch.fx.symbolic_trace(_layer("act-leaky_relu", 2))
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        gm(torch.randn(6, 4, 5, 5, requires_grad=True))


def test_graph_module_round_trips_through_its_code(tmp_path):
    """The generated code names the bnlab function: a GraphModule pickles and reloads."""
    import pickle

    gm = torch.fx.symbolic_trace(_layer("bn", 2))
    assert "graph_batch_norm" in gm.code
    again = pickle.loads(pickle.dumps(gm))
    x = torch.randn(6, 4, 5, 3)
    torch.testing.assert_close(again(x), copy.deepcopy(gm)(x))


def test_a_subclass_with_its_own_forward_is_refused():
    class Custom(bnlab.BatchNorm2d):
        def _forward_impl(self, input):
            return super()._forward_impl(input) * 2

    with pytest.raises(TypeError, match="trace a model that contains it"):
        torch.fx.symbolic_trace(Custom(4))
    # inside a model it is one node calling the layer, as every bnlab layer
    seq = nn.Sequential(Custom(4))
    x = torch.randn(6, 4, 5, 3)
    torch.testing.assert_close(torch.fx.symbolic_trace(copy.deepcopy(seq))(x), seq(x))
