"""torch.jit.script / torch.jit.trace of models with bnlab layers, and save/load in a fresh process.

Oracle: the eager model on the same input (outputs and, in training mode, input and parameter
gradients and the running statistics each updates, bit for bit where the same operators run),
torch.nn.BatchNorm2d's twin in eval mode, and for SyncBatchNorm over two ranks one-process BN on
the concatenated batch.
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

import bnlab
from toolchain_models import every_layer_model, make_layer, randomize, torch_twin

F64 = torch.float64


def _conv_bn(kind: str) -> nn.Module:
    torch.manual_seed(1)
    return randomize(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), make_layer(kind, 4), nn.ReLU()))


def _buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("how", ["script", "trace"])
def test_eval_model_with_every_layer(how):
    model = every_layer_model().eval()
    x = torch.randn(4, 3, 6, 6)
    compiled = torch.jit.script(model) if how == "script" else torch.jit.trace(model, (x,))
    x2 = torch.randn(6, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x2), model(x2), rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(model(x2), torch_twin(model)(x2), rtol=1e-5, atol=1e-5)
    # scripting leaves the Python model as it was (no layer swapped behind the user's back)
    assert all(type(a) is type(b) for a, b in zip(model.modules(), every_layer_model().modules()))


@pytest.mark.parametrize("kind", ["bn", "ghost", "renorm", "sync"])
@pytest.mark.parametrize("how", ["script", "trace"])
def test_training_mode_updates_running_statistics(kind, how):
    """A compiled training step normalizes with batch statistics and folds them in, as eager does."""
    eager, other = _conv_bn(kind).train(), _conv_bn(kind).train()
    x = torch.randn(8, 3, 5, 5) * 2 + 1
    if how == "script":
        compiled = torch.jit.script(other)
    else:
        compiled = torch.jit.trace(other, (x,), check_trace=False)
        other.load_state_dict(_conv_bn(kind).state_dict())          # tracing ran one step: start again
    for step in range(2):
        xs = x + step
        y_eager = eager(xs)
        y_comp = compiled(xs)
        torch.testing.assert_close(y_comp, y_eager, rtol=1e-6, atol=1e-6)
    for k, v in _buffers(eager).items():
        torch.testing.assert_close(other.state_dict()[k], v, rtol=1e-6, atol=1e-6)
    steps_per_call = 8 // 2 if kind == "ghost" else 1                 # four ghost batches of 2
    assert int(other[1].num_batches_tracked) == int(eager[1].num_batches_tracked) == 3 + 2 * steps_per_call


def _renorm(dim, **kw):
    cls = getattr(bnlab, f"BatchRenorm{dim}d")
    sched = dict(r_max=1.5, d_max=0.4, warmup_steps=2, r_max_steps=6, d_max_steps=4)
    return cls(3, **{**sched, **kw}).to(F64)


def _steps(dim, n=8):
    """Inputs whose scale and offset drift, so that both clips bind once the schedule relaxes."""
    shape = {1: (6, 3, 4), 2: (4, 3, 3, 2), 3: (3, 3, 2, 2, 2)}[dim]
    g = torch.Generator().manual_seed(dim)
    return [(torch.randn(shape, generator=g, dtype=F64) * (0.3 + 0.5 * t) + 2.0 - t,
             torch.randn(shape, generator=g, dtype=F64)) for t in range(n)]


def _step(m, x, dy):
    """One training step on ``x`` with upstream gradient ``dy``: (output, input grad, parameter grads)."""
    xi = x.clone().requires_grad_(True)
    y = m(xi)
    y.backward(dy)
    grads = [p.grad.clone() for p in m.parameters()]
    for p in m.parameters():
        p.grad = None
    return y.detach(), xi.grad, grads


def _step_both(eager, scripted, x, dy):
    return [_step(eager, x, dy), _step(scripted, x, dy)]


def _assert_same(a, b, exact=True):
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a, b, **tol)


def _assert_same_step(out):
    (y1, dx1, g1), (y2, dx2, g2) = out
    _assert_same(y2, y1)
    _assert_same(dx2, dx1)
    assert len(g1) == len(g2)
    for u, v in zip(g1, g2):
        _assert_same(v, u)


def _assert_same_buffers(eager, scripted):
    sd = scripted.state_dict()
    for k, v in eager.state_dict().items():
        _assert_same(sd[k], v)


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["ema", "cumulative"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_scripted_renorm_training_equals_eager(dim, momentum, affine):
    """Batch Renorm's training step under torch.jit.script: the schedule, r/d clipping, the μ/σ averages
    and num_batches_tracked, step by step, bit for bit in float64 (warm-up BN, ramps, clipped steps)."""
    eager = _renorm(dim, momentum=momentum, affine=affine)
    if affine:
        with torch.no_grad():
            eager.weight.copy_(torch.linspace(0.5, 1.5, 3, dtype=F64))
            eager.bias.copy_(torch.linspace(-0.3, 0.4, 3, dtype=F64))
    twin = copy.deepcopy(eager)
    scripted = torch.jit.script(twin)
    seen = set()
    for x, dy in _steps(dim):
        seen.add(eager.current_limits())
        _assert_same_step(_step_both(eager, scripted, x, dy))
        _assert_same_buffers(eager, twin)                            # the scripted module's buffers are twin's
    assert int(twin.num_batches_tracked) == 8
    assert {(1.0, 0.0), (1.5, 0.4)} <= seen and len(seen) >= 4       # warm-up, both ramps, the final limits
    eager.eval()
    scripted.eval()
    x = _steps(dim, 1)[0][0]
    _assert_same(scripted(x), eager(x))


@pytest.mark.parametrize("xdt,pdt", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                     (torch.float16, torch.float16)], ids=["f32", "bf16-f32", "f16"])
def test_scripted_renorm_training_equals_eager_in_low_precision(xdt, pdt):
    """The same step in float32 and half types (half input with float32 or half parameters): bit for bit."""
    torch.manual_seed(0)
    eager = bnlab.BatchRenorm2d(3, warmup_steps=0, r_max_steps=2, d_max_steps=2, r_max=1.5, d_max=0.5, dtype=pdt)
    twin = copy.deepcopy(eager)
    scripted = torch.jit.script(twin)
    for t in range(4):
        x = (torch.randn(4, 3, 3, 3) * (1 + t) + t).to(xdt)
        y = eager(x)                       # eager first: it settles the kernels (a cold build cache builds here)
        _assert_same(scripted(x), y)
        _assert_same_buffers(eager, twin)


def test_scripted_renorm_guard_and_policy_equal_eager():
    """A non-finite batch changes no buffer (eager: skipped and counted; scripted: masked, not counted);
    use_batch_stats / update_running_stats / track_running_stats=False behave alike."""
    eager = _renorm(2, warmup_steps=0, r_max_steps=0, d_max_steps=0)
    twin = copy.deepcopy(eager)
    scripted = torch.jit.script(twin)
    (x, dy), (x2, dy2) = _steps(2, 2)
    _assert_same_step(_step_both(eager, scripted, x, dy))
    bad = x2.clone()
    bad[0, 1, 0, 0] = float("inf")
    with pytest.warns(RuntimeWarning, match="non-finite"):
        eager(bad)
    with torch.no_grad():
        scripted(bad)
    _assert_same_buffers(eager, twin)
    assert eager.skipped_batches == 1 and int(twin.num_batches_tracked) == 1
    _assert_same_step(_step_both(eager, scripted, x2, dy2))
    _assert_same_buffers(eager, twin)

    for policy in (dict(update_running_stats=False), dict(use_batch_stats=True)):
        e, t = _renorm(2, warmup_steps=0, r_max_steps=0, d_max_steps=0), None
        for k, v in policy.items():
            setattr(e, k, v)
        e.eval() if "use_batch_stats" in policy else e.train()
        t = copy.deepcopy(e)
        s = torch.jit.script(t)
        _assert_same_step(_step_both(e, s, x, dy))
        _assert_same_buffers(e, t)

    e = _renorm(2, track_running_stats=False)
    t = copy.deepcopy(e)
    _assert_same_step(_step_both(e, torch.jit.script(t), x, dy))


def _sync_and_bn(c=3):
    ours = bnlab.SyncBatchNorm(c, dtype=F64)
    with torch.no_grad():
        ours.weight.copy_(torch.linspace(0.5, 1.5, c, dtype=F64))
        ours.bias.copy_(torch.linspace(-0.3, 0.4, c, dtype=F64))
    bn = bnlab.BatchNorm2d(c, dtype=F64)
    bn.load_state_dict(ours.state_dict())
    return ours, bn


def test_scripted_sync_batchnorm_trains_as_batchnorm_without_process_group():
    """No process group: scripted SyncBatchNorm's training step is bnlab BatchNorm's (= eager SyncBatchNorm's)."""
    ours, bn = _sync_and_bn()
    twin = copy.deepcopy(ours)
    scripted = torch.jit.script(twin)
    for x, dy in _steps(2, 4):
        out_sync = _step_both(ours, scripted, x, dy)
        _assert_same_step(out_sync)
        _assert_same_step([_step(bn, x, dy), out_sync[0]])
        _assert_same_buffers(ours, twin)
        _assert_same_buffers(bn, twin)
    assert int(twin.num_batches_tracked) == 4


SYNC_TWO_RANKS = textwrap.dedent("""
    import copy, datetime, io, sys
    import torch, torch.distributed as dist, torch.fx
    import bnlab

    rank, world, init = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    bnlab.BatchNorm2d(3)(torch.randn(2, 3, 2, 2))   # settle the kernels first (a cold build cache builds here)
    f64, tol = torch.float64, dict(rtol=1e-10, atol=1e-12)

    def same(a, b, **kw):
        torch.testing.assert_close(a, b, **(kw or dict(rtol=0, atol=0)))

    eager = bnlab.SyncBatchNorm(3, dtype=f64)
    with torch.no_grad():
        eager.weight.copy_(torch.tensor([0.5, 1.0, 1.5], dtype=f64))
        eager.bias.copy_(torch.tensor([-0.3, 0.1, 0.4], dtype=f64))
    one = bnlab.BatchNorm2d(3, dtype=f64)          # the oracle: one process, the concatenated batch
    one.load_state_dict(eager.state_dict())
    twin = copy.deepcopy(eager)
    scripted = torch.jit.script(twin)
    sizes = [3, 5]                                  # unequal shards
    traced_twin = copy.deepcopy(eager)
    traced = torch.jit.trace(traced_twin, torch.randn(sizes[rank], 3, 2, 2, dtype=f64), check_trace=False)
    traced_twin.load_state_dict(eager.state_dict())  # tracing ran one (synchronized) step: start again
    graph = torch.fx.symbolic_trace(copy.deepcopy(eager))   # a bare-layer fx graph (its own tensors)

    def step(m, x, dy):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        y.backward(dy)
        grads = [p.grad.clone() for p in m.parameters()]
        for p in m.parameters():
            p.grad = None
        return y.detach(), xi.grad, grads

    for t in range(4):
        g = torch.Generator().manual_seed(t)
        xs = [torch.randn(n, 3, 2, 2, generator=g, dtype=f64) * (1 + t) + t for n in sizes]
        dys = [torch.randn(n, 3, 2, 2, generator=g, dtype=f64) for n in sizes]
        x, dy, lo = xs[rank], dys[rank], sum(sizes[:rank])
        model = scripted
        if t == 3:                                  # the last step on a saved and reloaded copy
            buf = io.BytesIO()
            torch.jit.save(scripted, buf)
            buf.seek(0)
            model = torch.jit.load(buf)
        (ye, dxe, ge), (ys, dxs, gs) = step(eager, x, dy), step(model, x, dy)
        for y_, dx_, g_ in ((ys, dxs, gs), step(traced, x, dy), step(graph, x, dy)):
            same(y_, ye)
            same(dx_, dxe)
            for u, v in zip(ge, g_):
                same(v, u)
        for k, v in eager.state_dict().items():
            same(traced_twin.state_dict()[k], v)
            same(graph.state_dict()[k], v)
        y1, dx1, g1 = step(one, torch.cat(xs), torch.cat(dys))
        same(ys, y1[lo:lo + sizes[rank]], **tol)
        same(dxs, dx1[lo:lo + sizes[rank]], **tol)
        for u, v in zip(g1, gs):                    # this rank's part of dγ, dβ: summed over ranks = BN's
            dist.all_reduce(v)
            same(v, u, **tol)
        state = model.state_dict()
        for k, v in eager.state_dict().items():
            same(state[k], v)
            same(state[k], one.state_dict()[k], **tol)
    print("ok", int(twin.num_batches_tracked))
    dist.destroy_process_group()
""")


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_scripted_sync_batchnorm_trains_over_two_ranks(tmp_path):
    """2 ranks (gloo): the scripted, the traced (jit.trace) and the bare-layer fx SyncBatchNorm's training
    steps equal the eager one bit for bit (outputs, input and parameter gradients, running statistics, over
    four steps, the scripted one's last on a jit.save/jit.load copy), and all equal one-process BN on the
    concatenated batch."""
    init = "file://" + str(tmp_path / "pg_init")
    procs = [subprocess.Popen([sys.executable, "-c", SYNC_TWO_RANKS, str(r), "2", init], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env()) for r in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=240))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip() == "ok 3", err[-3000:]


SYNC_IN_A_GROUP_OF_ONE = textwrap.dedent("""
    import datetime, io, tempfile
    import torch, torch.distributed as dist
    import bnlab

    dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    bnlab.BatchNorm2d(3)(torch.randn(2, 3, 2, 2))   # settle the kernels first (a cold build cache builds here)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    for group in (None, dist.new_group([0])):       # the world, and a named subgroup (resolved by name)
        m = bnlab.SyncBatchNorm(3, dtype=torch.float64, process_group=group)
        bn = bnlab.BatchNorm2d(3, dtype=torch.float64)
        s = torch.jit.script(bnlab.SyncBatchNorm(3, dtype=torch.float64, process_group=group))
        y = s(x)
        for other in (m, bn):                       # eager SyncBatchNorm is local here, i.e. BatchNorm
            torch.testing.assert_close(y, other(x), rtol=0, atol=0)
            torch.testing.assert_close(s.running_var, other.running_var, rtol=0, atol=0)
        buf = io.BytesIO()
        torch.jit.save(s, buf)                      # the group is saved by name, not as an object
        buf.seek(0)
        torch.testing.assert_close(torch.jit.load(buf)(x), y, rtol=0, atol=0)
    print("ok")
    dist.destroy_process_group()
""")


@pytest.mark.distributed
def test_scripted_sync_batchnorm_in_a_group_of_one():
    """A group of one rank is local BN, scripted as in eager mode; a subgroup is held and saved by name."""
    done = subprocess.run([sys.executable, "-c", SYNC_IN_A_GROUP_OF_ONE], capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), OMP_NUM_THREADS="1")


def test_save_load_in_a_fresh_process(tmp_path):
    """A scripted and a traced model saved here load and run in a new interpreter that imports bnlab."""
    model = every_layer_model().eval()
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        expect = model(x)
    torch.jit.save(torch.jit.script(model), str(tmp_path / "scripted.pt"))
    torch.jit.save(torch.jit.trace(model, (x,)), str(tmp_path / "traced.pt"))
    torch.save({"x": x, "y": expect}, str(tmp_path / "io.pt"))
    code = textwrap.dedent(f"""
        import torch, bnlab
        io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)
        for name in ("scripted", "traced"):
            m = torch.jit.load({str(tmp_path)!r} + "/" + name + ".pt")
            with torch.no_grad():
                torch.testing.assert_close(m(io["x"]), io["y"], rtol=1e-6, atol=1e-5)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_training_save_load_in_a_fresh_process(tmp_path):
    """A model with every bnlab layer, scripted in training mode, saved, loaded in a new interpreter and
    trained there for three steps: outputs, gradients and buffers equal the eager model's here (float64)."""
    model = every_layer_model().to(F64).train()
    torch.jit.save(torch.jit.script(copy.deepcopy(model)), str(tmp_path / "train.pt"))
    g = torch.Generator().manual_seed(3)
    steps = []
    for t in range(3):
        x = (torch.randn(4, 3, 6, 6, generator=g, dtype=F64) * (1 + t) + t).requires_grad_(True)
        dy = torch.randn(4, 4, 6, 6, generator=g, dtype=F64)
        y = model(x)
        y.backward(dy)
        steps.append({"x": x.detach(), "dy": dy, "y": y.detach(), "dx": x.grad,
                      "grads": {k: p.grad.clone() for k, p in model.named_parameters()}})
        model.zero_grad(set_to_none=True)
    torch.save({"steps": steps, "state": model.state_dict()}, str(tmp_path / "io.pt"))
    code = textwrap.dedent(f"""
        import torch, bnlab
        io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)
        m = torch.jit.load({str(tmp_path / 'train.pt')!r})
        assert m.training
        tol = dict(rtol=1e-12, atol=1e-12)
        for s in io["steps"]:
            x = s["x"].clone().requires_grad_(True)
            y = m(x)
            y.backward(s["dy"])
            torch.testing.assert_close(y, s["y"], **tol)
            torch.testing.assert_close(x.grad, s["dx"], **tol)
            for k, p in m.named_parameters():
                torch.testing.assert_close(p.grad, s["grads"][k], **tol, msg=k)
                p.grad = None
        state = m.state_dict()
        assert state.keys() == io["state"].keys()
        for k, v in io["state"].items():
            torch.testing.assert_close(state[k], v, **tol, msg=k)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
