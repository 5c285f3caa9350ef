"""The custom operators: torch.compile without graph breaks, torch.export tracing, fake tensors."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo

import bnlab
from bnlab.kernels import ops


class _Small(torch.nn.Module):
    """conv → BN2d → ReLU → pool → BN1d: both ops, both BN dimensionalities."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn2 = bnlab.BatchNorm2d(4)
        self.bn1 = bnlab.BatchNorm1d(4)

    def forward(self, x):
        h = torch.relu(self.bn2(self.conv(x)))
        return self.bn1(h.mean(dim=(2, 3)))


def _model(train: bool, momentum=0.1) -> _Small:
    """The default settings, non-finite guard included (it is branch-free when compiled)."""
    torch.manual_seed(0)
    m = _Small().train(train)
    m.bn2.momentum = momentum
    return m


def _bnlab_nodes(graph) -> list[str]:
    return [str(n.target) for n in graph.nodes if "bnlab" in str(n.target)]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_dynamo_sees_no_graph_break(train):
    m, x = _model(train), torch.randn(4, 3, 6, 6)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(m)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


@pytest.mark.parametrize("fmt", [None, torch.channels_last], ids=str)
def test_compiled_training_step_matches_eager(fmt):
    """fullgraph compile (AOTAutograd: fake kernels + registered autograd) = eager, values and grads."""
    x = torch.randn(4, 3, 6, 6)
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    eager, compiled = _model(True), _model(True)
    torch._dynamo.reset()
    step = torch.compile(compiled, backend="aot_eager", fullgraph=True)
    ye, yc = eager(x), step(x)
    torch.testing.assert_close(yc, ye)
    ye.square().sum().backward()
    yc.square().sum().backward()
    for pe, pc in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(pc.grad, pe.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled.bn2.running_var, eager.bn2.running_var)
    assert int(compiled.bn2.num_batches_tracked) == 1


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_export_traces_bnlab_ops(train):
    m, x = _model(train), torch.randn(4, 3, 6, 6)
    ref = _model(train)
    exported = torch.export.export(m, (x,))
    names = _bnlab_nodes(exported.graph)
    op = "bnlab.batch_norm_train.default" if train else "bnlab.batch_norm_eval.default"
    assert names == [op, op]
    torch.testing.assert_close(exported.module()(x), ref(x))


def test_fake_implementations_match_real_outputs():
    x = torch.randn(5, 3, 4, 2).contiguous(memory_format=torch.channels_last)
    w, b = torch.rand(3), torch.randn(3)
    real = ops.batch_norm_train(x, w, b, 1e-5)
    torch.library.opcheck(ops.batch_norm_train.op, (x, w, b, 1e-5))
    torch.library.opcheck(ops.batch_norm_eval.op, (x, real[1], real[2], w, b, 1e-5))
    inv = torch.rsqrt(real[2] + 1e-5)
    for needs in [(True, True, True), (False, True, False)]:
        torch.library.opcheck(ops.batch_norm_backward.op, (torch.randn_like(x), x, w, real[1], inv, *needs))
        torch.library.opcheck(ops.batch_norm_backward_eval.op, (torch.randn_like(x), x, None, real[1], inv, *needs))


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum=0.1", "momentum=None"])
def test_compiled_guard_masks_nonfinite_batches(momentum):
    """Under compile the guard is a mask: finite batches update as in eager, a NaN batch changes nothing."""
    eager, compiled = _model(True, momentum), _model(True, momentum)
    torch._dynamo.reset()
    step = torch.compile(compiled, backend="aot_eager", fullgraph=True)
    for i in range(3):
        x = torch.randn(4, 3, 6, 6) + i
        eager(x)
        step(x)
    torch.testing.assert_close(compiled.bn2.running_mean, eager.bn2.running_mean)
    torch.testing.assert_close(compiled.bn2.running_var, eager.bn2.running_var)
    before = {k: v.clone() for k, v in compiled.bn2.state_dict().items() if "running" in k or "num_" in k}
    bad = torch.randn(4, 3, 6, 6)
    bad[0, 0, 0, 0] = float("nan")
    step(bad)
    for k, v in before.items():
        assert torch.equal(compiled.bn2.state_dict()[k], v), k
