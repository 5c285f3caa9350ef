"""Which implementation runs: the per-call path choice, its counters, tracing through the real op.

A call the compiled kernels cannot serve (functorch transforms, forward-AD dual tensors)
takes the composite path for that call only; tracing contexts always record the
``bnlab`` operator (never a constant graph).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import forward_ad as fwAD

import bnlab
from bnlab import kernels as K

SRC = os.path.dirname(os.path.dirname(bnlab.__file__))


def _bn(x, w=None, b=None):
    return K.bn_train(x, w, b, None, None, None, 0.1, 1e-5, False)[0]


def test_counts_name_the_path_and_reason(backend):
    K.reset_path_counts()
    x = torch.randn(4, 3, 5)
    _bn(x)
    K.bn_eval(x, torch.zeros(3), torch.ones(3), None, None, 1e-5)
    want = ("compiled", "cpu") if backend == "compiled" else ("reference", "backend")
    assert K.path_counts() == {want: 2}
    K.reset_path_counts()
    assert K.path_counts() == {}


def test_vmap_runs_composite_for_that_call_only(backend):
    """One vmap call takes the composite path; the next plain call is back on the backend's path."""
    xs = torch.randn(3, 6, 4, 5, dtype=torch.float64)
    w = torch.rand(4, dtype=torch.float64) + 0.5
    K.reset_path_counts()
    got = torch.func.vmap(lambda x: _bn(x, w))(xs)
    want = torch.stack([TF.batch_norm(x, None, None, w, None, True) for x in xs])
    torch.testing.assert_close(got, want)
    assert K.path_counts() == {("composite", "functorch"): 1}
    _bn(xs[0])
    plain = ("compiled", "cpu") if backend == "compiled" else ("reference", "backend")
    assert K.path_counts()[plain] == 1
    assert bnlab.get_backend() == backend


def test_grad_and_jacrev_match_torch(backend):
    x = torch.randn(5, 3, dtype=torch.float64)
    w = torch.rand(3, dtype=torch.float64) + 0.5
    f = lambda x: _bn(x, w).pow(3).sum()  # noqa: E731
    g = lambda x: TF.batch_norm(x, None, None, w, None, True).pow(3).sum()  # noqa: E731
    torch.testing.assert_close(torch.func.grad(f)(x), torch.func.grad(g)(x))
    torch.testing.assert_close(torch.func.jacrev(lambda x: _bn(x, w))(x),
                               torch.func.jacrev(lambda x: TF.batch_norm(x, None, None, w, None, True))(x))


def test_forward_ad_dual_tensors(backend):
    x, t = torch.randn(6, 3, 4, dtype=torch.float64), torch.randn(6, 3, 4, dtype=torch.float64)
    rm, rv = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
    K.reset_path_counts()
    with fwAD.dual_level():
        d = fwAD.make_dual(x, t)
        jt = fwAD.unpack_dual(_bn(d)).tangent
        je = fwAD.unpack_dual(K.bn_eval(d, rm, rv, None, None, 1e-5)).tangent
        rt = fwAD.unpack_dual(TF.batch_norm(d, None, None, training=True)).tangent
        re = fwAD.unpack_dual(TF.batch_norm(d, rm, rv, training=False)).tangent
        _bn(x)                                                       # not dual: not composite
    torch.testing.assert_close(jt, rt)
    torch.testing.assert_close(je, re)
    counts = K.path_counts()
    assert counts[("composite", "forward_ad")] == 2 and sum(counts.values()) == 3


def test_meta_and_fake_tensors_use_the_fake_kernels(backend):
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.empty(4, 3, 5, 5, device="meta").contiguous(memory_format=torch.channels_last)
    rm, rv, nbt = (torch.zeros(3, device="meta"), torch.ones(3, device="meta"), torch.tensor(0, device="meta"))
    y, mean, var, ok = K.bn_train(x, None, None, rm, rv, nbt, 0.1, 1e-5)
    assert y.shape == x.shape and y.stride() == x.stride() and mean.shape == (3,) and ok.dtype == torch.bool
    with FakeTensorMode():
        xf = torch.randn(4, 3, 5, requires_grad=True)
        yf = K.bn_train(xf, torch.ones(3), None, torch.zeros(3), torch.ones(3), torch.tensor(0), None, 1e-5)[0]
        yf.sum().backward()
        assert xf.grad.shape == xf.shape


def test_make_fx_records_the_operators(backend):
    from torch.fx.experimental.proxy_tensor import make_fx

    def f(x, w, rm, rv, nbt):
        return K.bn_train(x, w, None, rm, rv, nbt, 0.1, 1e-5)[0]

    gm = make_fx(f)(torch.randn(4, 3), torch.ones(3), torch.zeros(3), torch.ones(3), torch.tensor(0))
    assert "bnlab.bn_train" in str(gm.graph)


_FRESH = """
import json, sys, torch, bnlab
m = torch.jit.load(sys.argv[1])
x = torch.load(sys.argv[2])
print(json.dumps({"y": m(x).tolist()}))
"""


def test_jit_trace_records_the_op_and_round_trips_in_a_fresh_process(backend, tmp_path):
    w, b = torch.rand(3) + 0.5, torch.randn(3)
    rm, rv = torch.randn(3), torch.rand(3) + 0.5

    class Eval(torch.nn.Module):
        def forward(self, x):
            return K.bn_eval(x, rm, rv, w, b, 1e-5, "relu")

    x = torch.randn(4, 3, 6)
    traced = torch.jit.trace(Eval(), x)
    assert "bnlab::bn_eval" in str(traced.inlined_graph)
    x2 = torch.randn(5, 3, 6)                                        # another batch size: not a constant graph
    torch.testing.assert_close(traced(x2), K.bn_eval(x2, rm, rv, w, b, 1e-5, "relu"))
    path = tmp_path / "bn.pt"
    torch.jit.save(traced, str(path))
    torch.save(x2, tmp_path / "x.pt")
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), BNLAB_BACKEND=backend)
    out = subprocess.run([sys.executable, "-c", _FRESH, str(path), str(tmp_path / "x.pt")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    torch.testing.assert_close(torch.tensor(json.loads(out.stdout)["y"]), K.bn_eval(x2, rm, rv, w, b, 1e-5, "relu"))


def test_jit_trace_training_op_updates_buffers(backend):
    c = 3
    rm, rv, nbt = torch.zeros(c), torch.ones(c), torch.tensor(0)

    def f(x):
        return K.bn_train(x, None, None, rm, rv, nbt, 0.1, 1e-5)[0]

    traced = torch.jit.trace(f, torch.randn(4, c), check_trace=False)
    assert "bnlab::bn_train" in str(traced.graph)
    rm.zero_(); rv.fill_(1); nbt.zero_()
    x = torch.randn(6, c) + 2
    traced(x)
    torch.testing.assert_close(rm, 0.1 * x.mean(0))
    assert int(nbt) == 1


def test_vmap_with_shared_running_stats_says_what_to_do(backend):
    rm, rv, nbt = torch.zeros(3), torch.ones(3), torch.tensor(0)
    with pytest.raises(RuntimeError, match="track_running_stats=False"):
        torch.func.vmap(lambda x: K.bn_train(x, None, None, rm, rv, nbt, 0.1, 1e-5)[0])(torch.randn(2, 5, 3))
    assert int(nbt) == 0


def test_vmap_with_batched_buffers_updates_each_member(backend):
    """Model ensembling: each vmapped member has its own buffers and they update like separate BNs."""
    xs = torch.randn(3, 8, 2, dtype=torch.float64)
    rms, rvs, nbts = torch.zeros(3, 2, dtype=torch.float64), torch.ones(3, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.long)
    torch.func.vmap(lambda x, rm, rv, n: K.bn_train(x, None, None, rm, rv, n, 0.1, 1e-5)[0])(xs, rms, rvs, nbts)
    for i in range(3):
        ref = torch.nn.BatchNorm1d(2, dtype=torch.float64)
        ref(xs[i])
        torch.testing.assert_close(rms[i], ref.running_mean)
        torch.testing.assert_close(rvs[i], ref.running_var)
    assert nbts.tolist() == [1, 1, 1]
