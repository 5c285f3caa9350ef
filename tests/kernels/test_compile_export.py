"""The custom operators: torch.compile without graph breaks, torch.export tracing, fake tensors."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo

import bnlab
from bnlab import kernels as K
from bnlab.kernels import OPS


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
    op = "bnlab.bn_train.default" if train else "bnlab.bn_eval.default"
    assert [n for n in names if "bn_" in n and "auto_functionalized" not in n] in ([op, op], []) and len(names) >= 2
    assert all(op.split(".")[1] in n for n in names)
    torch.testing.assert_close(exported.module()(x), ref(x))


def test_fake_implementations_match_real_outputs(backend):
    """opcheck: schema, fake kernel, autograd registration and AOT dispatch agree with the real kernels."""
    x = torch.randn(5, 3, 4, 2).contiguous(memory_format=torch.channels_last)
    w, b = torch.rand(3) + 0.5, torch.randn(3)
    rm, rv, nbt = torch.zeros(3), torch.ones(3), torch.tensor(0)
    torch.library.opcheck(OPS.bn_train, (x, w, b, rm, rv, nbt, 0.1, 1e-5, True, "identity", 0.0))
    mean, var = OPS.bn_stats(x)
    torch.library.opcheck(OPS.bn_stats, (x,))
    torch.library.opcheck(OPS.bn_eval, (x, rm, rv, w, b, 1e-5, "relu", 0.0))
    inv = torch.rsqrt(var + 1e-5)
    torch.library.opcheck(OPS.bn_apply, (x, mean, inv, w, b, "silu", 0.0))
    dy = torch.randn_like(x)
    for mask in ([True, True, True], [False, True, False]):
        torch.library.opcheck(OPS.bn_backward, (dy, x, w, b, mean, var, 1e-5, "leaky_relu", 0.1, mask))
        torch.library.opcheck(OPS.bn_apply_backward, (dy, x, mean, inv, None, b, "identity", 0.0, mask))
        torch.library.opcheck(OPS.bn_backward_from_output, (dy, x, w, b, var, 1e-5, "leaky_relu", 0.1, mask))
    torch.library.opcheck(OPS.bn_backward_reduce, (dy, x, mean, inv, w, b, "relu", 0.0))
    s1, s2 = OPS.bn_backward_reduce(dy, x, mean, inv, w, b, "relu", 0.0)
    torch.library.opcheck(OPS.bn_backward_elemt, (dy, x, mean, inv, w, b, s1, s2, 40, "relu", 0.0))
    torch.library.opcheck(OPS.bn_train_, (x.clone(), w, b, rm, rv, nbt, None, 1e-5, True, "leaky_relu", 0.1),
                          test_utils=("test_schema", "test_faketensor"))


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
