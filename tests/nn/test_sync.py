"""SyncBatchNorm: W processes = one process on the concatenated batch.

The identity tests spawn 2 and 3 gloo processes on 127.0.0.1 (``_sync_worker.py``,
one spawn per world size running every case of ``CASES``) and compare each
rank's outputs, input gradients, running statistics and eval outputs with
``torch.nn.BatchNorm*d`` *and* ``bnlab.BatchNorm*d`` run on the concatenation of
the shards, in float64. Parameter gradients are compared after summing them
over the ranks (what DistributedDataParallel's all-reduce does, before its 1/W
averaging); a DDP run checks the same end to end. Every collective has a 60 s
timeout and every spawn a wall-clock limit, so a bug fails instead of hanging.
A gloo group of one rank in this process checks the fallback and gradchecks the
closed-form backward. Tests without any process group: ``test_sync_local.py``;
``convert_sync_batchnorm``: ``test_sync_convert.py``.
"""
from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist

import bnlab
from bnlab.nn import _dist_stats as ds
from bnlab.nn.sync import SyncBatchNormFunction

from conftest import forbid_torch_batchnorm
from _sync_worker import CASES, DDP_CASE, batch, ddp_batch, ddp_model, parameters, shard

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sync_worker.py")
SPAWN_LIMIT_S = 120
BACKEND_FOR_WORLD = {2: "reference", 3: "auto"}
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-5),
       torch.bfloat16: dict(rtol=3e-2, atol=3e-2)}
# x = 1e6 + 1e-2·z: one ulp of x (1.2e-10) is 1e-8 of the spread, so any two float64 BNs differ there
TOL_CASE = {"1d_offset_1e6": dict(rtol=1e-7, atol=1e-7)}

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_once(world: int, out_dir: str) -> tuple[bool, str]:
    port = _free_port()
    # world 2 runs the reference kernels, world 3 the default choice ("auto": the fused CPU ones)
    env = dict(os.environ, OMP_NUM_THREADS="1", BNLAB_BACKEND=BACKEND_FOR_WORLD.get(world, "auto"))
    procs = [
        subprocess.Popen([sys.executable, WORKER, str(r), str(world), str(port), out_dir],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        for r in range(world)
    ]
    logs, ok = [], True
    try:
        for r, p in enumerate(procs):
            try:
                out, _ = p.communicate(timeout=SPAWN_LIMIT_S)
            except subprocess.TimeoutExpired:
                ok = False
                out = f"rank {r} did not finish within {SPAWN_LIMIT_S} s (killed)"
            ok = ok and p.returncode == 0
            logs.append(f"--- rank {r} (rc={p.returncode}) ---\n{out}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return ok, "\n".join(logs)


@functools.lru_cache(maxsize=None)
def run_group(world: int) -> tuple[dict, ...]:
    """Spawn ``world`` ranks once (a retry if the port was taken) and load every rank's results."""
    out_dir = tempfile.mkdtemp(prefix=f"bnlab-sync{world}-")
    try:
        ok, log = _spawn_once(world, out_dir)
        if not ok and "address already in use" in log.lower():
            ok, log = _spawn_once(world, out_dir)
        if not ok:
            raise AssertionError(f"SyncBatchNorm workers failed (world size {world}):\n{log[-6000:]}")
        return tuple(torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True) for r in range(world))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def _oracle(cls, case: dict, members: tuple[int, ...]) -> dict:
    """One-process BN (``cls``) on the concatenation of ``members``' shards, split back per rank."""
    dtype = getattr(torch, case.get("dtype", "float64"))
    sizes = [case["sizes"][r] for r in members]
    layer = cls(case["channels"], dtype=dtype, **case.get("kwargs", {}))
    w, b = parameters(case)
    with torch.no_grad():
        if layer.weight is not None:
            layer.weight.copy_(w)
        if layer.bias is not None:
            layer.bias.copy_(b)

    def cat(what, step):
        return torch.cat([shard(batch(case, step, what), case["sizes"], r) for r in members]).to(dtype)

    rec = {"y": [], "dx": [], "dw": [], "db": []}
    for step in range(case["steps"]):
        x = cat("x", step).requires_grad_(True)
        y = layer(x)
        (y * cat("g", step)).sum().backward()
        rec["y"].append(y.detach().split(sizes))
        rec["dx"].append(x.grad.split(sizes))
        rec["dw"].append(None if layer.weight is None else layer.weight.grad.clone())
        rec["db"].append(None if layer.bias is None else layer.bias.grad.clone())
        layer.zero_grad(set_to_none=True)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        rec[name] = getattr(layer, name)
    if layer.running_mean is not None:
        layer.eval()
        rec["y_eval"] = layer(cat("x", 99)).detach().split(sizes)
    return rec


def _torch_cls(case):
    return {0: torch.nn.BatchNorm1d, 1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}[
        len(case["spatial"])]


def _bnlab_cls(case):
    return {0: bnlab.BatchNorm1d, 1: bnlab.BatchNorm1d, 2: bnlab.BatchNorm2d, 3: bnlab.BatchNorm3d}[
        len(case["spatial"])]


GRID = [(world, name) for world in sorted(CASES) for name in CASES[world]]


@pytest.mark.distributed
@pytest.mark.timeout(2 * SPAWN_LIMIT_S + 60)
@pytest.mark.parametrize("world,name", GRID, ids=[f"w{w}-{n}" for w, n in GRID])
@pytest.mark.parametrize("oracle", ["torch", "bnlab"])
def test_equals_one_process_bn_on_concatenated_batch(world, name, oracle):
    case = CASES[world][name]
    ranks = [results[name] for results in run_group(world)]
    tol = TOL_CASE.get(name, TOL[getattr(torch, case.get("dtype", "float64"))])
    cls = _torch_cls(case) if oracle == "torch" else _bnlab_cls(case)
    for members in case.get("groups", (tuple(range(world)),)):
        if sum(case["sizes"][r] for r in members) * int(np.prod(case["spatial"], dtype=int)) == 1:
            # one value per channel in the whole group: one-process BN refuses, so must every rank
            with pytest.raises(ValueError, match="more than 1 value per channel"):
                _oracle(cls, case, members)
            for r in members:
                assert ranks[r]["error"] is not None and "more than 1 value per channel" in ranks[r]["error"]
            continue
        ref = _oracle(cls, case, members)
        for step in range(case["steps"]):
            for i, r in enumerate(members):
                got = ranks[r]
                assert got["error"] is None, got["error"]
                torch.testing.assert_close(got["y"][step], ref["y"][step][i], **tol, msg=f"y, rank {r}, step {step}")
                torch.testing.assert_close(got["dx"][step], ref["dx"][step][i], **tol,
                                           msg=f"input grad, rank {r}, step {step}")
            # parameter gradients: this rank's part; their sum over the group is the full gradient
            for key in ("dw", "db"):
                if ref[key][step] is None:
                    assert all(ranks[r][key][step] is None for r in members)
                    continue
                total = sum(ranks[r][key][step] for r in members)
                torch.testing.assert_close(total, ref[key][step], **tol, msg=f"{key} summed over ranks, step {step}")
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            for r in members:
                if ref[key] is None:
                    assert ranks[r][key] is None
                    continue
                torch.testing.assert_close(ranks[r][key], ref[key], **tol, msg=f"{key}, rank {r}")
                # identical on every rank of the group: bit for bit, not just close
                assert torch.equal(ranks[r][key], ranks[members[0]][key]), f"{key} differs between ranks"
        if "y_eval" in ref:
            for i, r in enumerate(members):
                torch.testing.assert_close(ranks[r]["y_eval"], ref["y_eval"][i], **tol, msg=f"eval y, rank {r}")


@pytest.mark.distributed
@pytest.mark.timeout(2 * SPAWN_LIMIT_S + 60)
def test_ddp_training_equals_one_process_training():
    # DDP averages gradients over W ranks; one process on the concatenated batch with the summed
    # loss has W times that gradient, so SGD with lr/W takes the same steps
    world = len(DDP_CASE["sizes"])
    ranks = [results["ddp"] for results in run_group(world)]
    model = ddp_model(bnlab, convert=False)                      # the torch BN model, unconverted
    opt = torch.optim.SGD(model.parameters(), lr=DDP_CASE["lr"] / world)
    for step in range(DDP_CASE["steps"]):
        opt.zero_grad()
        y = model(ddp_batch(step, "x"))
        (y * ddp_batch(step, "g")).sum().backward()
        opt.step()
        for r, y_r in enumerate(y.detach().split(list(DDP_CASE["sizes"]))):
            torch.testing.assert_close(ranks[r]["y"][step], y_r, **TOL[torch.float64])
        for r in range(world):
            for got, want in zip(ranks[r]["params"][step], model.parameters()):
                torch.testing.assert_close(got, want.detach(), **TOL[torch.float64], msg=f"step {step}, rank {r}")
    for r in range(world):
        for got, want in zip(ranks[r]["buffers"], model.buffers()):
            torch.testing.assert_close(got, want, **TOL[torch.float64])


def _set_params(*layers):
    gen = torch.Generator().manual_seed(3)
    c = layers[0].num_features
    w, b = 1 + 0.3 * torch.randn(c, generator=gen), torch.randn(c, generator=gen)
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(w)
            layer.bias.copy_(b)


@pytest.fixture
def world_of_one():
    """A gloo process group of one rank in this process, torn down afterwards."""
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                            timeout=timedelta(seconds=30))
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.timeout(60)
def test_world_size_one_falls_back_and_function_gradcheck(world_of_one, monkeypatch):
    # the module: a group of one never synchronizes (any collective would raise here)
    ours, ref = bnlab.SyncBatchNorm(3, dtype=torch.float64), bnlab.BatchNorm2d(3, dtype=torch.float64)
    _set_params(ours, ref)
    with monkeypatch.context() as mp:
        mp.setattr(ds, "global_mean_var", lambda *a, **k: pytest.fail("collective called with a group of one"))
        x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
        torch.testing.assert_close(ours.running_var, ref.running_var, rtol=0, atol=0)

    # the autograd Function on a real (one-rank) group: gather, merge, all-reduce and the
    # closed-form backward against finite differences of the whole forward, stats included
    def f(x, w, b):
        m, mean, var = ds.global_mean_var(x, world_of_one)
        return SyncBatchNormFunction.apply(x, w, b, mean, var, m, 1e-5, world_of_one)

    x = (torch.randn(5, 3, 2, dtype=torch.float64) * 3 + 2).requires_grad_(True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x, w, b))
    with forbid_torch_batchnorm():                                   # written from scratch: no ATen BN inside
        f(x, w, b).pow(2).sum().backward()
    y = f(torch.randn(0, 3, 2, dtype=torch.float64, requires_grad=True), w, b)   # an empty shard alone
    assert y.shape == (0, 3, 2)
