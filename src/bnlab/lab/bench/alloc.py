"""Allocation cost told apart from kernel speed.

glibc serves allocations above its mmap threshold with fresh ``mmap`` pages, each
page faulting on first touch; the threshold moves with the heap's history (a freed
mmap'd block raises it), so which peer pays depends on what ran before. Two
measurements separate this from the kernels:

* the ``layers`` section rerun in a child process with ``MALLOC_MMAP_THRESHOLD_``
  fixed (and ``MALLOC_TRIM_THRESHOLD_`` large, so freed heap memory is kept and
  reused): allocations up to the threshold then come from the heap without faults.
  glibc caps the threshold at 32 MiB on 64-bit, so larger tensors still fault
  in both runs — for both peers alike, since they allocate the same outputs;
* the ``layers`` section rerun in a child process with ``THP_MEM_ALLOC_ENABLE=1``:
  torch's CPU allocator then places allocations of 2 MiB and more on transparent huge
  pages (one fault per 2 MiB), for both peers — bnlab's kernels already put their own
  outputs of 24 MiB and more there, so this run tells kernel speed from allocation cost
  beyond glibc's 32 MiB cap too;
* the cost of one page fault, measured here: filling a fresh 64 MiB tensor vs
  refilling it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ..config import config_to_dict
from .timing import Clock, summary

__all__ = ["fault_cost", "run_fixed_malloc", "run_thp", "child_env", "thp_env"]


def fault_cost(nbytes: int = 64 << 20, reps: int = 5) -> dict:
    """µs per minor page fault: (fill of fresh pages − refill) / faults."""
    clock = Clock()
    fresh, warm, faults = [], [], []
    n = nbytes // 4
    for _ in range(reps):
        clock.start()
        t = torch.empty(n).fill_(1.0)
        s, f = clock.stop()
        clock.start()
        t.fill_(2.0)
        s2, _ = clock.stop()
        fresh.append(s)
        warm.append(s2)
        faults.append(f)
        del t
    f = sorted(faults)[len(faults) // 2]
    extra = summary(fresh)["median_ms"] - summary(warm)["median_ms"]
    return {"bytes": nbytes, "faults": f, "fresh_ms": summary(fresh)["median_ms"],
            "refill_ms": summary(warm)["median_ms"], "us_per_fault": 1e3 * extra / f if f else None}


def child_env(threshold: int) -> dict:
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = str(threshold)
    env["MALLOC_TRIM_THRESHOLD_"] = str(1 << 40)
    return env


def thp_env() -> dict:
    env = dict(os.environ)
    env["THP_MEM_ALLOC_ENABLE"] = "1"
    return env


def _child_layers(cfg, env: dict, what: str) -> dict:
    """The ``layers`` section (and the fault cost) in a child process with ``env``."""
    with tempfile.TemporaryDirectory(prefix="bnlab-bench-") as tmp:
        cfg_path, out_path = Path(tmp) / "config.json", Path(tmp) / "layers.json"
        cfg_path.write_text(json.dumps(config_to_dict(cfg)))
        cmd = [sys.executable, "-m", "bnlab.lab.bench", "--child-layers", str(cfg_path), str(out_path)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"the {what} run failed (exit {proc.returncode}): {tail}")
        return json.loads(out_path.read_text())


def run_fixed_malloc(cfg) -> dict:
    """The ``layers`` section (and the fault cost) in a child process with a fixed mmap threshold."""
    res = _child_layers(cfg, child_env(cfg.mmap_threshold), "fixed-allocator")
    res["env"] = {"MALLOC_MMAP_THRESHOLD_": cfg.mmap_threshold, "MALLOC_TRIM_THRESHOLD_": 1 << 40}
    return res


def thp_mode() -> str:
    """The kernel's transparent-huge-page mode (``always``, ``madvise``, ``never``) or ``unknown``."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "unknown"
    return text[text.index("[") + 1:text.index("]")] if "[" in text else text.strip()


def run_thp(cfg) -> dict:
    """The ``layers`` section in a child process whose torch allocator uses transparent huge pages."""
    res = _child_layers(cfg, thp_env(), "huge-page allocator")
    res["env"] = {"THP_MEM_ALLOC_ENABLE": 1, "thp_mode": thp_mode()}
    return res
