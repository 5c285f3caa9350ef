"""``bnlab bench``: BatchNorm speed on CPU, every peer side by side in one run.

Peers: ``bnlab`` (fused numba kernels), ``bnlab-ref`` (pure-torch reference kernels),
``aten`` (``torch.nn.BatchNorm*d``), ``compile`` (``torch.compile`` of the torch layer)
and ``naive`` (a module written like the source document's sample: chained ``mean``
calls, autograd through every intermediate). Modes: training forward (``fwd``),
backward alone (``bwd``), both (``fwdbwd``), eval forward (``eval``).

Timing: warm-up, then ``reps`` rounds; each round runs every peer once in a rotated
order (interleaved, so drift hits everyone alike). Reported: median and spread
(25th-75th percentile) in ms, speedup over ATen, and efficiency = bytes that must move /
time / copy bandwidth, the bandwidth being a ``copy_`` of the same tensor timed in the
same rounds. Bytes that must move, in passes over the activation: fwd 3 (read for the
statistics, read + write to normalize), bwd 5 (read dy, x for the reductions; read dy,
x + write dx), eval 2. Also: bytes saved for backward per layer (through
``torch.autograd.graph.saved_tensors_hooks``) and an end-to-end SGD step of the source
document's ``Net`` and a small ResNet with bnlab vs torch layers.

Writes ``config.json``, ``results.json``, ``table.md`` and ``speedup.png`` into the run
folder. ``python -m bnlab.lab.bench --preset quick`` is a seconds-long smoke run.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import bnlab

from .config import ConfigError, add_config_flags, apply_overrides, check, config_to_dict, overrides_from_args
from .bench_e2e import Net, bench_end_to_end, small_resnet
from .bench_report import _label, format_table, plot, targets
from .runs.runfiles import write_json, write_text

__all__ = ["BenchConfig", "PRESETS", "run", "main", "NaiveBatchNorm", "parse_shapes", "summary",
           "Net", "small_resnet"]

PEERS = ("bnlab", "bnlab-ref", "aten", "compile", "naive")
MODES = ("fwd", "bwd", "fwdbwd", "eval")
PASSES = {"fwd": 3, "bwd": 5, "fwdbwd": 8, "eval": 2}    # passes over the activation that must happen


def parse_shapes(text: str) -> list[tuple[tuple[int, ...], bool]]:
    """``"32x64x56x56cl,256x1024"`` → ``[((32, 64, 56, 56), True), ((256, 1024), False)]``."""
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        cl = item.endswith("cl")
        try:
            shape = tuple(int(d) for d in item[:-2 if cl else None].split("x"))
        except ValueError:
            raise ConfigError(f"bad shape {item!r}: expected e.g. 32x64x56x56 or 32x64x56x56cl") from None
        check(2 <= len(shape) <= 5 and all(d > 0 for d in shape), f"bad shape {item!r}")
        check(not cl or len(shape) in (4, 5), f"channels_last needs a 4-D or 5-D shape: {item!r}")
        out.append((shape, cl))
    check(bool(out), "no shapes given")
    return out


@dataclass(frozen=True)
class BenchConfig:
    """What ``bnlab bench`` measures."""

    shapes: str = field(default="32x64x56x56,64x256x14x14,128x64x32x32,256x1024,64x512x128,"
                                "32x64x56x56cl,64x256x14x14cl,128x64x32x32cl",
                        metadata={"help": "comma-separated NxCx... shapes; suffix 'cl' = channels_last"})
    peers: tuple[str, ...] = field(default=PEERS, metadata={"help": f"subset of {PEERS}"})
    modes: tuple[str, ...] = field(default=MODES, metadata={"help": f"subset of {MODES}"})
    reps: int = field(default=20, metadata={"help": "timed rounds per shape and mode"})
    warmup: int = field(default=3, metadata={"help": "untimed rounds first"})
    dtype: str = field(default="float32", metadata={"help": "float32 | float64 | bfloat16 | float16"})
    threads: int = field(default=0, metadata={"help": "torch/numba threads (0: torch's default)"})
    e2e: bool = field(default=True, metadata={"help": "also time full training steps of Net and a ResNet"})
    e2e_batch: int = field(default=32, metadata={"help": "batch size of the end-to-end steps"})
    e2e_size: int = field(default=32, metadata={"help": "image side of the end-to-end steps"})
    plot: bool = field(default=True, metadata={"help": "write speedup.png"})

    def __post_init__(self):
        check(set(self.peers) <= set(PEERS), f"peers must be among {PEERS}, got {self.peers}")
        check(set(self.modes) <= set(MODES), f"modes must be among {MODES}, got {self.modes}")
        check(self.reps >= 1 and self.warmup >= 0, "reps must be >= 1 and warmup >= 0")
        check(self.dtype in ("float32", "float64", "bfloat16", "float16"), f"bad dtype {self.dtype!r}")
        parse_shapes(self.shapes)


PRESETS = {
    "full": BenchConfig(),
    "quick": BenchConfig(shapes="8x16x12x12,8x16x12x12cl,64x32", peers=("bnlab", "bnlab-ref", "aten", "naive"),
                         reps=3, warmup=1, e2e_batch=4, e2e_size=8, plot=True),
}


# ----------------------------------------------------------------------------- peers
class NaiveBatchNorm(nn.Module):
    """BN written like the source document's sample: chained means, autograd through all.

    μ = mean over dim 0, then over each spatial dim; σ² the same on (x − μ)²;
    y = γ·(x − μ)/sqrt(σ² + ε) + β. Generalized to any ``(N, C, *)`` input, and (unlike
    the sample) the running statistics are updated under ``no_grad`` with PyTorch's
    momentum, so repeated steps do not chain graphs: this is the naive *speed* baseline.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("moving_mean", torch.zeros(num_features))
        self.register_buffer("moving_variance", torch.ones(num_features))

    def _chained_mean(self, t):
        t = t.mean(dim=0, keepdim=True)
        for d in range(2, t.dim()):
            t = t.mean(dim=d, keepdim=True)
        return t

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)                       # (1, C, 1, ...)
        if self.training:
            mean = self._chained_mean(x)
            variance = self._chained_mean((x - mean) ** 2)
            with torch.no_grad():
                self.moving_mean.lerp_(mean.view(-1), self.momentum)
                self.moving_variance.lerp_(variance.view(-1), self.momentum)
        else:
            mean, variance = self.moving_mean.view(shape), self.moving_variance.view(shape)
        normalized = (x - mean) / torch.sqrt(variance + self.eps)
        return self.gamma.view(shape) * normalized + self.beta.view(shape)


_TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
_BNLAB_BN = {2: bnlab.BatchNorm1d, 3: bnlab.BatchNorm1d, 4: bnlab.BatchNorm2d, 5: bnlab.BatchNorm3d}


def _with_backend(name: str, module: nn.Module) -> Callable:
    def call(x):
        bnlab.set_backend(name)
        return module(x)
    return call


def make_peer(peer: str, shape, dtype) -> tuple[nn.Module, Callable]:
    """The layer of ``peer`` for inputs of ``shape`` and the callable that runs it."""
    c, nd = shape[1], len(shape)
    if peer in ("bnlab", "bnlab-ref"):
        mod = _BNLAB_BN[nd](c, dtype=dtype)
        return mod, _with_backend("numba" if peer == "bnlab" else "reference", mod)
    if peer == "aten":
        mod = _TORCH_BN[nd](c, dtype=dtype)
        return mod, mod
    if peer == "compile":
        mod = _TORCH_BN[nd](c, dtype=dtype)
        return mod, torch.compile(mod, dynamic=False)
    mod = NaiveBatchNorm(c).to(dtype)
    return mod, mod


# ----------------------------------------------------------------------------- timing
def _step(mode: str, fn: Callable, mod: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Callable[[], float]:
    """A closure that runs one rep of ``mode`` and returns the timed seconds."""
    def run() -> float:
        mod.train(mode != "eval")
        if mode == "eval":
            with torch.no_grad():
                t0 = time.perf_counter()
                fn(x)
                return time.perf_counter() - t0
        xg = x.detach().requires_grad_()
        if mode == "bwd":
            y = fn(xg)                                               # untimed forward
            t0 = time.perf_counter()
            y.backward(dy)
            return time.perf_counter() - t0
        t0 = time.perf_counter()
        y = fn(xg)
        if mode == "fwdbwd":
            y.backward(dy)
        return time.perf_counter() - t0
    return run


def summary(seconds: list[float]) -> dict:
    ms = sorted(s * 1e3 for s in seconds)
    q = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
    return {"median_ms": statistics.median(ms), "p25_ms": q[0], "p75_ms": q[2], "min_ms": ms[0], "n": len(ms)}


def saved_bytes(mod: nn.Module, fn: Callable, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward after one training forward (distinct storages)."""
    seen: dict[tuple, int] = {}

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.dtype, tuple(t.shape))
        seen[key] = t.numel() * t.element_size()
        return t

    mod.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x.detach().requires_grad_())
    return sum(seen.values())


def bench_shape(shape, cl: bool, cfg: BenchConfig) -> dict:
    """All peers × modes on one shape, interleaved; plus copy bandwidth and saved bytes."""
    dtype = getattr(torch, cfg.dtype)
    x = torch.randn(shape).to(dtype)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d)
    dy = torch.randn_like(x)
    dst = torch.empty_like(x)
    if "compile" in cfg.peers:
        torch._dynamo.reset()                  # one shape at a time: stay under the recompile limit
    peers = {p: make_peer(p, shape, dtype) for p in cfg.peers}
    nbytes = x.numel() * x.element_size()
    out = {"shape": list(shape), "channels_last": cl, "bytes": nbytes, "modes": {}, "saved_bytes": {}}

    def copy() -> float:
        t0 = time.perf_counter()
        dst.copy_(x)
        return time.perf_counter() - t0

    copies = []
    for mode in cfg.modes:
        steps = {p: _step(mode, fn, mod, x, dy) for p, (mod, fn) in peers.items()}
        names = list(steps)
        times = {p: [] for p in names}
        for r in range(cfg.warmup + cfg.reps):
            order = names[r % len(names):] + names[:r % len(names)]   # rotate who goes first
            for p in order:
                t = steps[p]()
                if r >= cfg.warmup:
                    times[p].append(t)
            c = copy()
            if r >= cfg.warmup:
                copies.append(c)
        out["modes"][mode] = {p: summary(ts) for p, ts in times.items()}
    copy_s = statistics.median(copies)
    out["copy_ms"] = copy_s * 1e3
    out["copy_gbps"] = 2 * nbytes / copy_s / 1e9
    for mode, res in out["modes"].items():
        base = res.get("aten", {}).get("median_ms")
        for p, r in res.items():
            t = r["median_ms"] / 1e3
            r["speedup_vs_aten"] = base / r["median_ms"] if base else None
            r["efficiency"] = (PASSES[mode] * nbytes / t) / (out["copy_gbps"] * 1e9) if mode in PASSES else None
    for p, (mod, fn) in peers.items():
        out["saved_bytes"][p] = saved_bytes(mod, fn, x)
    bnlab.set_backend("auto")
    return out


# ----------------------------------------------------------------------------- entry points
def run(config: BenchConfig, out_dir: str | Path) -> dict:
    """Run the benchmark described by ``config``; write its files into ``out_dir``."""
    out_dir = Path(out_dir)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    results = {"config": config_to_dict(config), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "shapes": []}
    write_json(out_dir / "config.json", results["config"])
    cfg = config
    if "compile" in cfg.peers and not _compile_works():
        cfg = dataclasses.replace(cfg, peers=tuple(p for p in cfg.peers if p != "compile"))
        results["config"]["peers"] = list(cfg.peers)
        results["compile_skipped"] = "torch.compile does not work on this machine"
    for shape, cl in parse_shapes(cfg.shapes):
        print(f"bench {_label(shape, cl)} ...", file=sys.stderr, flush=True)
        results["shapes"].append(bench_shape(shape, cl, cfg))
    if cfg.e2e:
        results["end_to_end"] = bench_end_to_end(cfg)
    results["targets"] = targets(results["shapes"])
    write_json(out_dir / "results.json", results)
    write_text(out_dir / "table.md", format_table(results))
    if cfg.plot:
        plot(results, out_dir / "speedup.png")
    return results


def _compile_works() -> bool:
    try:
        f = torch.compile(lambda t: t * 2 + 1)
        return bool(torch.equal(f(torch.ones(3)), torch.full((3,), 3.0)))
    except Exception:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bnlab bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Example: bnlab bench --preset full --out runs/bench")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full", help="starting configuration")
    parser.add_argument("--out", default="runs/bench", help="run folder for config/results/table/plot")
    add_config_flags(parser, BenchConfig, PRESETS["full"])
    args = parser.parse_args(argv)
    try:
        cfg = apply_overrides(PRESETS[args.preset], overrides_from_args(args, BenchConfig))
    except ConfigError as exc:
        parser.error(str(exc))
    results = run(cfg, args.out)
    print(format_table(results))
    print(f"wrote {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
