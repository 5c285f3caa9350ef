"""One rank of the SyncBatchNorm identity test (spawned by ``test_sync.py``).

Usage: ``python _sync_worker.py RANK WORLD PORT OUT_DIR``. The rank joins a gloo
group on ``tcp://127.0.0.1:PORT`` (60 s timeout on the rendezvous and on every
collective), runs every case of ``CASES[WORLD]`` on its shard of a batch that
all ranks generate identically, and writes what it saw to ``OUT_DIR/rank{RANK}.pt``
(atomically). The test compares those files with one-process BN on the
concatenated batch. This module also defines the cases and the data, so that
the test and the workers agree on them.
"""
from __future__ import annotations

import os
import sys
import zlib
from datetime import timedelta

import torch

# name -> case. sizes: batch size per rank; spatial: trailing dims; groups: the
# process groups (each rank uses the one it belongs to; None = the whole world)
CASES = {
    2: {
        "1d_even": dict(sizes=(4, 4), channels=3, spatial=(), steps=3),
        "2d_empty_rank_cma": dict(sizes=(5, 0), channels=4, spatial=(3, 2), steps=2, kwargs=dict(momentum=None)),
        "3d_uneven_no_affine": dict(sizes=(1, 6), channels=2, spatial=(2, 2, 2), steps=2, kwargs=dict(affine=False)),
        "1d_len_no_bias": dict(sizes=(3, 2), channels=5, spatial=(4,), steps=2, kwargs=dict(bias=False)),
        "2d_no_tracking": dict(sizes=(2, 3), channels=3, spatial=(2, 2), steps=2,
                               kwargs=dict(track_running_stats=False)),
        "1d_single_value_shards": dict(sizes=(1, 1), channels=3, spatial=(), steps=2),
        "2d_float32": dict(sizes=(3, 5), channels=4, spatial=(3, 3), steps=2, dtype="float32"),
        "1d_len_bfloat16": dict(sizes=(6, 2), channels=3, spatial=(5,), steps=2, dtype="bfloat16"),
    },
    3: {
        "2d_5_3_0": dict(sizes=(5, 3, 0), channels=4, spatial=(2, 3), steps=3),
        "1d_2_7_1": dict(sizes=(2, 7, 1), channels=3, spatial=(), steps=3, kwargs=dict(momentum=0.3)),
        "1d_offset_1e6": dict(sizes=(4, 2, 5), channels=3, spatial=(3,), steps=2, offset=1e6, scale=1e-2),
        "3d_0_2_1": dict(sizes=(0, 2, 1), channels=2, spatial=(2, 1, 3), steps=2),
        "2d_subgroups_01_2": dict(sizes=(3, 4, 5), channels=3, spatial=(2, 2), steps=2, groups=((0, 1), (2,))),
        "1d_one_value_in_all": dict(sizes=(1, 0, 0), channels=3, spatial=(), steps=1),
    },
}


def batch(case: dict, step: int, what: str) -> torch.Tensor:
    """The whole (concatenated) batch of ``step``: input ``x`` or upstream gradient ``g``, float64."""
    # a seed that is the same in every process (str hashes are salted per process)
    gen = torch.Generator().manual_seed(zlib.crc32(repr((what, step, case["channels"], case["sizes"])).encode()))
    shape = (sum(case["sizes"]), case["channels"]) + tuple(case["spatial"])
    t = torch.randn(shape, generator=gen, dtype=torch.float64)
    if what == "x":
        # per-channel location/scale so channels differ; optional large offset (Chan merge numerics)
        loc = torch.arange(case["channels"], dtype=torch.float64).view((1, -1) + (1,) * len(case["spatial"]))
        t = case.get("offset", 0.0) + 0.5 * loc + case.get("scale", 1.0) * (1 + loc) * t
    return t


def parameters(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7 + case["channels"])
    c = case["channels"]
    return 1 + 0.3 * torch.randn(c, generator=gen, dtype=torch.float64), torch.randn(c, generator=gen, dtype=torch.float64)


def shard(t: torch.Tensor, sizes, rank: int) -> torch.Tensor:
    start = sum(sizes[:rank])
    return t[start : start + sizes[rank]]


def run_case(bnlab, case: dict, rank: int, groups: dict) -> dict:
    dtype = getattr(torch, case.get("dtype", "float64"))
    pg = None
    for members in case.get("groups", ()):
        if rank in members:
            pg = groups[tuple(members)]
    layer = bnlab.SyncBatchNorm(case["channels"], process_group=pg, dtype=dtype, **case.get("kwargs", {}))
    w, b = parameters(case)
    with torch.no_grad():
        if layer.weight is not None:
            layer.weight.copy_(w)
        if layer.bias is not None:
            layer.bias.copy_(b)
    rec = {"y": [], "dx": [], "dw": [], "db": [], "error": None}
    layer.train()
    for step in range(case["steps"]):
        x = shard(batch(case, step, "x"), case["sizes"], rank).to(dtype).requires_grad_(True)
        g = shard(batch(case, step, "g"), case["sizes"], rank).to(dtype)
        try:
            y = layer(x)
        except ValueError as err:
            rec["error"] = str(err)
            return rec
        (y * g).sum().backward()
        rec["y"].append(y.detach())
        rec["dx"].append(x.grad if x.grad is not None else torch.zeros_like(x))
        for name, key in (("weight", "dw"), ("bias", "db")):
            p = getattr(layer, name)
            rec[key].append(None if p is None else p.grad.detach().clone())
            if p is not None:
                p.grad = None
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        t = getattr(layer, name)
        rec[name] = None if t is None else t.detach().clone()
    if layer.running_mean is not None:
        layer.eval()                                                 # Alg. 2: local, no collective
        x = shard(batch(case, 99, "x"), case["sizes"], rank).to(dtype)
        rec["y_eval"] = layer(x).detach()
    return rec


# DistributedDataParallel end to end: Linear → (torch BN converted to bnlab SyncBN), SGD steps
DDP_CASE = dict(sizes=(5, 3, 0), features=(4, 3), steps=3, lr=0.1)


def ddp_model(bnlab, convert: bool) -> torch.nn.Module:
    torch.manual_seed(11)
    model = torch.nn.Sequential(torch.nn.Linear(*DDP_CASE["features"]), torch.nn.BatchNorm1d(DDP_CASE["features"][1]))
    model = model.double()
    return bnlab.convert_sync_batchnorm(model) if convert else model


def ddp_batch(step: int, what: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 * step + (what == "g"))
    n = sum(DDP_CASE["sizes"])
    return torch.randn(n, DDP_CASE["features"][what == "g"], generator=gen, dtype=torch.float64)


def run_ddp(bnlab, rank: int) -> dict:
    """Train with DDP (which averages gradients over ranks); record the parameters after each step."""
    model = torch.nn.parallel.DistributedDataParallel(ddp_model(bnlab, convert=True))
    opt = torch.optim.SGD(model.parameters(), lr=DDP_CASE["lr"])
    rec = {"y": [], "params": [], "buffers": None}
    for step in range(DDP_CASE["steps"]):
        x = shard(ddp_batch(step, "x"), DDP_CASE["sizes"], rank)
        g = shard(ddp_batch(step, "g"), DDP_CASE["sizes"], rank)
        opt.zero_grad()
        y = model(x)
        (y * g).sum().backward()
        opt.step()
        rec["y"].append(y.detach())
        rec["params"].append([p.detach().clone() for p in model.module.parameters()])
    rec["buffers"] = [b.clone() for b in model.module.buffers()]
    return rec


def main(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    import bnlab

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        # every rank creates every group, in the same order (a torch.distributed rule)
        groups = {}
        for case in CASES[world].values():
            for members in case.get("groups", ()):
                if tuple(members) not in groups:
                    groups[tuple(members)] = dist.new_group(list(members), timeout=timedelta(seconds=60))
        results = {name: run_case(bnlab, case, rank, groups) for name, case in CASES[world].items()}
        if world == len(DDP_CASE["sizes"]):
            results["ddp"] = run_ddp(bnlab, rank)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    tmp = os.path.join(out_dir, f".rank{rank}.pt.tmp")
    torch.save(results, tmp)
    os.replace(tmp, os.path.join(out_dir, f"rank{rank}.pt"))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
