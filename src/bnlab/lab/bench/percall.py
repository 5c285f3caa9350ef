"""Per-call cost on a tiny input, where kernels take no time and overhead is all there is."""
from __future__ import annotations

import torch

from .layers import BNLAB_BN, TORCH_BN
from .timing import Clock, interleaved, ratio_summary, summary

__all__ = ["TINY_SHAPE", "bench_per_call"]

TINY_SHAPE = (4, 16, 4, 4)


def _step(layer, x, dy, mode: str, calls: int):
    clock = Clock()

    def step():
        if mode == "eval":
            layer.eval()
            with torch.no_grad():
                clock.start()
                for _ in range(calls):
                    layer(x)
                t, f = clock.stop()
        else:
            layer.train()
            xs = [x.detach().requires_grad_() for _ in range(calls)]
            clock.start()
            for xi in xs:
                layer(xi).backward(dy)
            t, f = clock.stop()
        return t / calls, f / calls
    return step


def bench_per_call(cfg) -> dict:
    """µs per call on (4, 16, 4, 4): training forward + backward, and eval forward."""
    x = torch.randn(TINY_SHAPE)
    dy = torch.randn_like(x)
    c = TINY_SHAPE[1]
    out = {"shape": list(TINY_SHAPE), "calls_per_sample": cfg.tiny_calls}
    for mode in ("train", "eval"):
        layers = {"bnlab": BNLAB_BN[4](c), "torch": TORCH_BN[4](c)}
        steps = {n: _step(m, x, dy, mode, cfg.tiny_calls) for n, m in layers.items()}
        secs, _ = interleaved(steps, cfg.reps, cfg.warmup)
        out[mode] = {"peers": {n: summary(s, unit="us") for n, s in secs.items()},
                     "speedup": ratio_summary(secs["torch"], secs["bnlab"])}
    return out
