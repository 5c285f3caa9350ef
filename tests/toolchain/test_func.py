"""torch.func transforms and forward-mode AD through bnlab layers, in training and eval mode.

Oracle: the same transform of torch.nn.BatchNorm*d with the same state, float64.
Training mode with running statistics mutates buffers, which vmap cannot batch (for
torch's layers neither): the vmap cases use ``track_running_stats=False`` or eval mode,
as PyTorch's own functorch documentation prescribes.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.autograd import forward_ad as fwAD
from torch.func import functional_call, grad, jacrev, jvp, stack_module_state, vjp, vmap

import bnlab
from toolchain_models import randomize

F64 = torch.float64
TOL = dict(rtol=1e-9, atol=1e-10)


def _pair(kind="bn", train=True, track=True, dim=2):
    torch.manual_seed(0)
    c = 3
    if kind == "bn":
        ours = getattr(bnlab, f"BatchNorm{dim}d")(c, track_running_stats=track)
    else:                                                            # one ghost batch = BN; r_max=1,d_max=0 = BN
        ours = {"ghost": lambda: bnlab.GhostBatchNorm2d(c, virtual_batch_size=64, track_running_stats=track),
                "renorm": lambda: bnlab.BatchRenorm2d(c, r_max=1.0, d_max=0.0, track_running_stats=track)}[kind]()
    ours = ours.to(F64)
    if track:
        randomize(ours)
    theirs = getattr(nn, f"BatchNorm{dim}d")(c, track_running_stats=track).to(F64)
    theirs.load_state_dict(ours.state_dict())
    return ours.train(train), theirs.train(train)


def _x(*shape):
    return torch.randn(*shape, dtype=F64) * 2 + 0.5


def _assert_same_state(a, b):
    for (k, u), (_, v) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(u, v, **TOL, msg=k)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", ["bn", "ghost", "renorm"])
def test_grad_vjp_jvp_jacrev(kind, train):
    # training mode: batch statistics without running ones (captured buffers cannot be
    # mutated inside a transform, for torch's layers neither: see the test below)
    ours, theirs = _pair(kind, train, track=not train)
    x, t = _x(4, 3, 2, 2), torch.randn(4, 3, 2, 2, dtype=F64)
    w = torch.randn(4, 3, 2, 2, dtype=F64)

    def loss(m):
        return lambda inp: (m(inp) * w).sum()

    torch.testing.assert_close(grad(loss(ours))(x), grad(loss(theirs))(x), **TOL)
    y1, f1 = vjp(ours, x)
    y2, f2 = vjp(theirs, x)
    torch.testing.assert_close(y1, y2, **TOL)
    torch.testing.assert_close(f1(w)[0], f2(w)[0], **TOL)
    torch.testing.assert_close(jvp(ours, (x,), (t,))[1], jvp(theirs, (x,), (t,))[1], **TOL)
    xs = _x(3, 3)                                                    # small: jacrev is (N·C)²
    o1, o2 = _pair(kind, train, track=not train, dim=1) if kind == "bn" else (None, None)
    if o1 is not None:
        torch.testing.assert_close(jacrev(o1)(xs), jacrev(o2)(xs), **TOL)
    _assert_same_state(ours, theirs)                                 # the running statistics moved alike


@pytest.mark.parametrize("train,track", [(True, False), (False, True)], ids=["train_untracked", "eval"])
def test_vmap_and_per_sample_grads(train, track):
    ours, theirs = _pair("bn", train, track)
    xs = _x(5, 4, 3, 2, 2)                                           # 5 independent batches
    torch.testing.assert_close(vmap(ours)(xs), vmap(theirs)(xs), **TOL)

    def per_sample(m):
        params = {k: v.detach() for k, v in m.named_parameters()}
        buffers = {k: v for k, v in m.named_buffers()}

        def f(p, x):
            return functional_call(m, (p, buffers), (x,)).pow(2).sum()

        return vmap(grad(f), in_dims=(None, 0))(params, xs)

    g1, g2 = per_sample(ours), per_sample(theirs)
    for k in g2:
        torch.testing.assert_close(g1[k], g2[k], **TOL)


def test_model_ensembling_stack_module_state():
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(nn.Sequential(nn.Linear(4, 3), bnlab.BatchNorm1d(3)).to(F64).eval())
    twins = [bnlab.convert_model(copy.deepcopy(m), to="torch") for m in models]
    x = _x(6, 4)

    def ensemble(ms):
        params, buffers = stack_module_state(ms)
        base = copy.deepcopy(ms[0]).to("meta")
        return vmap(lambda p, b: functional_call(base, (p, b), (x,)))(params, buffers)

    torch.testing.assert_close(ensemble(models), ensemble(twins), **TOL)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_forward_ad(train):
    ours, theirs = _pair("bn", train)
    x, t = _x(4, 3, 2, 2), torch.randn(4, 3, 2, 2, dtype=F64)
    outs = []
    for m in (ours, theirs):
        with fwAD.dual_level():
            y = m(fwAD.make_dual(x, t))
            p, tangent = fwAD.unpack_dual(y)
            outs.append((p.clone(), tangent.clone()))
    torch.testing.assert_close(outs[0][0], outs[1][0], **TOL)
    torch.testing.assert_close(outs[0][1], outs[1][1], **TOL)
    _assert_same_state(ours, theirs)
    assert bnlab.kernels.path_counts().get(("composite", "forward_ad"), 0) > 0


def test_functional_batch_norm_under_grad():
    x, rm, rv = _x(4, 3), torch.randn(3, dtype=F64), torch.rand(3, dtype=F64) + 0.5
    for training, stats in ((True, (None, None)), (False, (rm, rv))):
        g1 = grad(lambda i: bnlab.functional.batch_norm(i, *stats, training=training).pow(3).sum())(x)
        g2 = grad(lambda i: torch.nn.functional.batch_norm(i, *stats, training=training).pow(3).sum())(x)
        torch.testing.assert_close(g1, g2, **TOL)


def test_captured_running_statistics_raise_as_in_torch():
    """A training step that would update captured buffers inside grad raises a RuntimeError, as torch's does."""
    ours, theirs = _pair("bn", True)
    x = _x(4, 3, 2, 2)
    for m in (theirs, ours):
        with pytest.raises(RuntimeError, match="mutate a captured Tensor"):
            grad(lambda i: m(i).sum())(x)
    _assert_same_state(ours, theirs)


RUNNING_STATS_TANGENT = textwrap.dedent("""
    import sys
    import torch
    import bnlab
    from torch.autograd import forward_ad as fwAD

    if len(sys.argv) > 1:
        assert bnlab.get_backend() == sys.argv[1], bnlab.get_backend()


    def run(fn, training, which):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64) * 2 + 0.5
        rm = torch.randn(3, generator=g, dtype=torch.float64)
        rv = torch.rand(3, generator=g, dtype=torch.float64) + 0.5
        w, b = torch.rand(3, generator=g, dtype=torch.float64) + 0.5, torch.randn(3, generator=g, dtype=torch.float64)
        t = torch.randn(3, generator=g, dtype=torch.float64)
        with fwAD.dual_level():
            rm_d = fwAD.make_dual(rm, t) if which in ("mean", "both") else rm
            rv_d = fwAD.make_dual(rv, t) if which in ("var", "both") else rv
            y, tangent = fwAD.unpack_dual(fn(x, rm_d, rv_d, w, b, training))
            stats = [fwAD.unpack_dual(s) for s in (rm_d, rv_d)]
            return (y.clone(), tangent, [(p.clone(), None if u is None else u.clone()) for p, u in stats])


    def functional(F):
        return lambda x, rm, rv, w, b, training: F(x, rm, rv, w, b, training=training)


    def module(cls):
        def fn(x, rm, rv, w, b, training):
            m = cls(3, dtype=torch.float64).train(training)
            with torch.no_grad():
                m.weight.copy_(w)
                m.bias.copy_(b)
            m.running_mean, m.running_var = rm, rv                   # the dual tensors as the buffers
            return m(x)
        return fn


    pairs = [(functional(torch.nn.functional.batch_norm), functional(bnlab.functional.batch_norm)),
             (module(torch.nn.BatchNorm2d), module(bnlab.BatchNorm2d))]
    for theirs, ours in pairs:
        for training in (True, False):
            for which in ("mean", "var", "both"):
                (y1, t1, s1), (y2, t2, s2) = run(theirs, training, which), run(ours, training, which)
                torch.testing.assert_close(y2, y1, rtol=1e-12, atol=1e-12)
                assert (t1 is None) == (t2 is None), (training, which, t1, t2)
                if t1 is not None:
                    torch.testing.assert_close(t2, t1, rtol=1e-12, atol=1e-12)
                for (p1, u1), (p2, u2) in zip(s1, s2):               # primal updated alike, tangent kept
                    torch.testing.assert_close(p2, p1, rtol=1e-12, atol=1e-12)
                    assert (u1 is None) == (u2 is None)
                    if u1 is not None:
                        torch.testing.assert_close(u2, u1, rtol=0, atol=0)
    print("ok")
""")


@pytest.mark.parametrize("kernels", ["auto", "reference"])
def test_forward_ad_tangent_on_running_stats_only(kernels):
    """A tangent on running_mean/running_var only (the input without one): torch's BN returns the output
    without a tangent and updates the primal statistics; bnlab does the same, on both backends (the
    reference one chosen with BNLAB_BACKEND before import, in a fresh process)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), OMP_NUM_THREADS="1",
               BNLAB_BACKEND=kernels)
    done = subprocess.run([sys.executable, "-c", RUNNING_STATS_TANGENT, kernels], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
