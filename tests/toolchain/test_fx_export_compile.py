"""torch.fx.symbolic_trace, torch.export and torch.compile(fullgraph=True) with every bnlab layer.

Oracle: the eager model — outputs and the running statistics one step updates — in
training and in evaluation mode. Batch Renorm's schedule is part of the traced graph
(no ``.item()`` on ``num_batches_tracked``).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
import torch.fx
from torch import nn

import bnlab
from toolchain_models import KINDS, make_layer, randomize


def _model(kind: str, train: bool) -> nn.Module:
    torch.manual_seed(2)
    m = randomize(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), make_layer(kind, 4), nn.ReLU()))
    return m.train(train)


def _step_matches(kind, train, transform):
    """``transform(copy)`` run once equals the eager model run once: output and buffers."""
    eager = _model(kind, train)
    other = _model(kind, train)
    x = torch.randn(8, 3, 5, 5) * 1.5 + 0.5
    run = transform(other, x)
    y_other = run(x)
    y_eager = eager(x)
    torch.testing.assert_close(y_other, y_eager, rtol=1e-5, atol=1e-5)
    for (k, a), (_, b) in zip(sorted(other.state_dict().items()), sorted(eager.state_dict().items())):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=k)
    return other, eager


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", KINDS)
def test_fx_symbolic_trace(kind, train):
    def trace(model, x):
        gm = torch.fx.symbolic_trace(model)
        assert any(n.op == "call_function" and "bnlab" in getattr(n.target, "__module__", "") for n in gm.graph.nodes)
        return gm

    _step_matches(kind, train, trace)


def _assert_step_equal(eager, gm, x, dy):
    """One step of the eager layer and of its GraphModule: outputs, gradients and buffers bit for bit."""
    outs = []
    for m in (eager, gm):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        outs.append(torch.autograd.grad(y, [xi, *m.parameters()], dy) + (y.detach(),))
    for u, v in zip(*outs):
        torch.testing.assert_close(v, u, rtol=0, atol=0)
    for k, v in eager.state_dict().items():
        torch.testing.assert_close(gm.state_dict()[k], v, rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", ["sync", "frozen"])
def test_fx_trace_of_a_bare_sync_or_frozen_layer(kind, train):
    """symbolic_trace(layer) of a bare SyncBatchNorm (no process group here: local BN; over two ranks see
    test_torchscript.py::test_scripted_sync_batchnorm_trains_over_two_ranks) or FrozenBatchNorm: one bnlab
    node; over three steps outputs, gradients and buffers equal the eager layer's, float64, bit for bit."""
    from bnlab.nn.frozen import graph_frozen_batch_norm
    from bnlab.nn.sync import graph_sync_batch_norm

    eager = randomize(make_layer(kind, 3).to(torch.float64)).train(train)
    gm = torch.fx.symbolic_trace(copy.deepcopy(eager))
    fn = {"sync": graph_sync_batch_norm, "frozen": graph_frozen_batch_norm}[kind]
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"] == [fn]
    g = torch.Generator().manual_seed(5)
    for t in range(3):
        x = torch.randn(4, 3, 3, 2, generator=g, dtype=torch.float64) * (1 + t) + t
        _assert_step_equal(eager, gm, x, torch.randn(4, 3, 3, 2, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_fx_trace_of_a_bare_batch_renorm(dim, train):
    """symbolic_trace(layer) of a bare Batch Renorm: one graph_batch_renorm node; over five steps of its
    schedule (warm-up BN, the ramps, the final limits) the GraphModule's outputs, gradients and buffers
    equal the eager layer's, float64, bit for bit."""
    from bnlab.nn.renorm import graph_batch_renorm

    shape = {1: (6, 3, 4), 2: (4, 3, 3, 2), 3: (3, 3, 2, 2, 2)}[dim]
    eager = getattr(bnlab, f"BatchRenorm{dim}d")(3, r_max=1.5, d_max=0.4, warmup_steps=1, r_max_steps=4,
                                                 d_max_steps=3, dtype=torch.float64).train(train)
    randomize(eager).num_batches_tracked.zero_()                     # the schedule from its first step
    gm = torch.fx.symbolic_trace(copy.deepcopy(eager))
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"] == [graph_batch_renorm]
    g = torch.Generator().manual_seed(dim)
    for t in range(5):
        x = torch.randn(shape, generator=g, dtype=torch.float64) * (0.5 + 0.5 * t) + 1.0 - t
        _assert_step_equal(eager, gm, x, torch.randn(shape, generator=g, dtype=torch.float64))
    assert int(gm.num_batches_tracked) == (5 if train else 0)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", KINDS)
def test_compile_fullgraph(kind, train):
    torch._dynamo.reset()

    def compile_(model, x):
        return torch.compile(model, fullgraph=True, backend="eager")

    _step_matches(kind, train, compile_)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", KINDS)
def test_export(kind, train):
    exported = {}

    def export(model, x):
        ep = torch.export.export(model, (x,))
        exported["ep"] = ep
        return ep.module()

    other, eager = _step_matches(kind, train, export)
    # the exported program itself carries the buffer updates: run it again on the originals
    if train and kind not in ("frozen",):
        ops = {str(n.target) for n in exported["ep"].graph.nodes if n.op == "call_function"}
        assert any("bnlab" in op for op in ops), ops


def test_renorm_schedule_is_traced_not_frozen():
    """The r_max/d_max ramp follows num_batches_tracked inside one compiled graph."""
    from bnlab import BatchRenorm2d

    torch._dynamo.reset()
    eager = BatchRenorm2d(3, warmup_steps=1, r_max_steps=3, d_max_steps=3, r_max=2.0, d_max=1.0)
    comp_layer = copy.deepcopy(eager)
    compiled = torch.compile(comp_layer, fullgraph=True, backend="eager")
    for step in range(5):
        x = torch.randn(6, 3, 2, 2) * (1 + step) + step
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(comp_layer.running_var, eager.running_var, rtol=1e-6, atol=1e-6)
    assert int(comp_layer.num_batches_tracked) == 5
