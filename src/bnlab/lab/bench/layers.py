"""Per-shape layer timing: bnlab's BatchNorm against ``torch.nn.BatchNorm*d``.

Modes: ``train`` (forward + backward in training mode, the running statistics
updated) and ``eval`` (inference forward under ``no_grad``). Each round also times a
``copy_`` of the input into a preallocated tensor: the copy bandwidth of this
machine in this run, against which the bytes a BN pass must move are set
(``train``: 8 passes over the activation — forward reads x for the statistics and
reads x / writes y; backward reads dy, x for the two sums and reads dy, x / writes dx;
``eval``: 2 passes).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

import bnlab

from .config import parse_shapes, shape_label
from .timing import Clock, interleaved, ratio_summary, summary, timed

__all__ = ["PASSES", "make_input", "make_step", "bench_pair", "bench_layers", "TORCH_BN", "BNLAB_BN"]

PASSES = {"train": 8, "eval": 2}
TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
BNLAB_BN = {2: bnlab.BatchNorm1d, 3: bnlab.BatchNorm1d, 4: bnlab.BatchNorm2d, 5: bnlab.BatchNorm3d}


def make_input(shape, cl: bool) -> torch.Tensor:
    """A float32 input of ``shape``, channels_last(_3d) when ``cl``."""
    x = torch.randn(shape)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d)
    return x


def make_step(mode: str, layer: nn.Module, x: torch.Tensor, dy: torch.Tensor,
              fresh_input: bool = False) -> Callable[[], tuple[float, int]]:
    """One timed call of ``layer`` in ``mode``: ``(seconds, page faults)``.

    ``fresh_input``: the layer gets a copy of ``x`` made untimed (in-place layers overwrite
    their input; give it to every peer of a comparison, so all see the same memory state).
    In ``train`` the input requires grad (as a copy: the child of a leaf), so dx is
    computed as in a network.
    """
    clock = Clock()

    def step() -> tuple[float, int]:
        if mode == "eval":
            layer.eval()
            with torch.no_grad():
                h = x.clone(memory_format=torch.preserve_format) if fresh_input else x
                clock.start()
                layer(h)
                return clock.stop()
        layer.train()
        h = x.detach().requires_grad_()
        if fresh_input:
            h = h.clone(memory_format=torch.preserve_format)
        clock.start()
        layer(h).backward(dy)
        out = clock.stop()
        layer.zero_grad(set_to_none=True)
        return out
    return step


def _copy_step(dst: torch.Tensor, x: torch.Tensor, tries: int = 3) -> Callable[[], tuple[float, int]]:
    """The best of ``tries`` timed ``dst.copy_(x)``: the machine's copy bandwidth this round."""
    step = timed(lambda: dst.copy_(x))

    def best() -> tuple[float, int]:
        return min(step() for _ in range(tries))
    return best


def bench_pair(layers: dict[str, nn.Module], shape, cl: bool, reps: int, warmup: int,
               modes=("train", "eval"), fresh_input: bool = False) -> dict:
    """Time ``layers`` (first = candidate, last = baseline) on one shape, interleaved with a copy.

    Returns per mode: per peer a :func:`summary` plus ``faults_per_step``; the paired
    ratio ``speedup`` = baseline time / candidate time per round (> 1: candidate faster);
    ``copy_gbps`` and, per peer, ``efficiency`` = PASSES·bytes / time / copy bandwidth, both
    from the best round (the undisturbed one on a shared machine); ``floor_ms``, the time
    those bytes take at the copy bandwidth, and ``bound_speedup`` = baseline / floor.
    """
    x = make_input(shape, cl)
    dy = torch.randn_like(x)
    dst = torch.empty_like(x)
    nbytes = x.numel() * x.element_size()
    names = list(layers)
    out = {"shape": list(shape), "channels_last": cl, "label": shape_label(shape, cl), "bytes": nbytes}
    for mode in modes:
        steps = {n: make_step(mode, layers[n], x, dy, fresh_input) for n in names}
        steps["copy"] = _copy_step(dst, x)
        secs, faults = interleaved(steps, reps, warmup, lead="copy")
        copy_gbps = 2 * nbytes / summary(secs["copy"])["median_ms"] * 1e3 / 1e9
        best_copy_gbps = 2 * nbytes / min(secs["copy"]) / 1e9
        res = {"copy_gbps": copy_gbps, "best_copy_gbps": best_copy_gbps, "peers": {}}
        for n in names:
            s = summary(secs[n])
            s["faults_per_step"] = sorted(faults[n])[len(faults[n]) // 2]
            # bytes a pass must move per second, from the median and from the best round
            s["gbps"] = PASSES[mode] * nbytes / (s["median_ms"] / 1e3) / 1e9
            s["best_gbps"] = PASSES[mode] * nbytes / (s["min_ms"] / 1e3) / 1e9
            s["efficiency"] = s["best_gbps"] / best_copy_gbps
            res["peers"][n] = s
        res["speedup"] = ratio_summary(secs[names[-1]], secs[names[0]])
        # the bandwidth floor: PASSES·bytes at the best copy bandwidth; the baseline's best time over
        # it is the most any kernel can gain on this shape here
        res["floor_ms"] = PASSES[mode] * nbytes / best_copy_gbps / 1e6
        res["bound_speedup"] = res["peers"][names[-1]]["min_ms"] / res["floor_ms"]
        out[mode] = res
    return out


def bench_layers(cfg) -> list[dict]:
    """bnlab.BatchNorm*d vs torch.nn.BatchNorm*d on every configured shape."""
    rows = []
    for shape, cl in parse_shapes(cfg.shapes):
        c, nd = shape[1], len(shape)
        layers = {"bnlab": BNLAB_BN[nd](c), "torch": TORCH_BN[nd](c)}
        rows.append(bench_pair(layers, shape, cl, cfg.reps, cfg.warmup))
    return rows
