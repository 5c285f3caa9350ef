"""Entry points of ``bnlab bench``: :func:`run` (a config → a run folder) and :func:`main` (the CLI)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from ..config import ConfigError, add_config_flags, apply_overrides, config_from_dict, config_to_dict, overrides_from_args
from .config import PRESETS, BenchConfig

__all__ = ["run", "main", "machine_state"]

SCHEMA = "bnlab-bench/1"
BUSY_LOAD_PER_CPU = 0.5      # others' load above half a CPU each: numbers not to be trusted
BUSY_SPREAD = 0.15           # median relative IQR of the layer timings above 15%: too noisy


def _kernels() -> str:
    from ... import kernels

    status = getattr(kernels, "extension_status", None)
    if status is None:
        return kernels.get_backend()
    st = status()
    if st.get("loaded"):
        return f"compiled C++ extension ({Path(st['path']).parent.name})"
    return f"reference (extension: {st.get('error') or 'not loaded'})"


def _progress(msg: str) -> None:
    print(f"bnlab bench: {msg}", file=sys.stderr, flush=True)


def machine_state(load_before: float, load_after: float, threads: int, sections: dict) -> dict:
    """Machine facts and the busy verdict (with its reasons)."""
    cpus = os.cpu_count() or 1
    reasons = []
    if load_before > BUSY_LOAD_PER_CPU * cpus:
        reasons.append(f"load {load_before:.2f} before the run on {cpus} CPUs")
    others_after = load_after - threads                             # the benchmark itself keeps `threads` busy
    if others_after > BUSY_LOAD_PER_CPU * cpus:
        reasons.append(f"load {load_after:.2f} after the run, ~{others_after:.1f} beyond the benchmark's {threads} threads")
    rows = sections.get("layers", {}).get("rows", [])
    spreads = [r[m]["peers"][p]["spread"] for r in rows for m in ("train", "eval") for p in r[m]["peers"]]
    if spreads and statistics.median(spreads) > BUSY_SPREAD:
        reasons.append(f"median spread (IQR/median) of the layer timings {statistics.median(spreads):.0%}")
    return {"cpu_count": cpus, "threads": threads, "torch": torch.__version__, "kernels": _kernels(),
            "load_before": load_before, "load_after": load_after, "busy": bool(reasons), "busy_reasons": reasons}


def _sections(cfg: BenchConfig) -> dict:
    from . import alloc, e2e, fused, layers, memory, percall

    out: dict = {}
    want = set(cfg.sections)
    if "layers" in want:
        _progress("layers (bnlab vs torch per shape)")
        out["layers"] = {"rows": layers.bench_layers(cfg), "fault_cost": alloc.fault_cost()}
    if "fixed_malloc" in want:
        _progress("layers again, fixed mmap threshold (child process)")
        try:
            out["fixed_malloc"] = alloc.run_fixed_malloc(cfg)
        except RuntimeError as exc:
            out["fixed_malloc"] = {"skipped": str(exc)}
    if "thp_alloc" in want:
        _progress("layers again, torch's allocator on huge pages (child process)")
        try:
            out["thp_alloc"] = alloc.run_thp(cfg)
        except RuntimeError as exc:
            out["thp_alloc"] = {"skipped": str(exc)}
    if "per_call" in want:
        _progress("per-call cost on (4,16,4,4)")
        out["per_call"] = percall.bench_per_call(cfg)
    if "fused" in want:
        _progress("fused BN+ReLU and In-Place ABN vs torch BN -> act")
        out["fused"] = {"rows": fused.bench_fused(cfg)}
    if "memory" in want:
        out["memory"] = memory.bench_memory()
    if "batch1" in want:
        _progress("batch-1 inference latency")
        out["batch1"] = e2e.bench_batch1(cfg)
    if "end_to_end" in want:
        _progress("ResNet-18-style SGD step")
        out["end_to_end"] = e2e.bench_sgd_step(cfg)
    return out


def run(config: BenchConfig, out_dir: str | Path, preset: str = "custom") -> dict:
    """Measure everything ``config`` asks for; write config/results/table/figure into ``out_dir``."""
    from .figure import speedup_figure
    from .output import write_figure, write_json, write_text
    from .report import format_report
    from .targets import evaluate_targets
    from .timing import load_average

    out_dir = Path(out_dir)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    write_json(out_dir / "config.json", {"preset": preset, **config_to_dict(config)})
    t0, load_before = time.perf_counter(), load_average()
    sections = _sections(config)
    load_after = load_average()
    res = {"schema": SCHEMA, "preset": preset, "smoke": config.smoke, "config": config_to_dict(config),
           "units": {"time": "ms", "per_call": "us", "bandwidth": "GB/s", "memory": "bytes"},
           "machine": machine_state(load_before, load_after, torch.get_num_threads(), sections),
           "sections": sections, "targets": evaluate_targets(sections), "seconds": time.perf_counter() - t0}
    write_json(out_dir / "results.json", res)
    write_text(out_dir / "table.md", format_report(res))
    if config.plot:
        write_figure(out_dir / "speedup.png", speedup_figure(res))
    return res


def _child_layers(cfg_path: str, out_path: str) -> int:
    """The ``layers`` section alone, for :func:`bnlab.lab.bench.alloc.run_fixed_malloc`."""
    from .alloc import fault_cost
    from .layers import bench_layers

    cfg = config_from_dict(BenchConfig, json.loads(Path(cfg_path).read_text()))
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    rows = bench_layers(cfg)
    Path(out_path).write_text(json.dumps({"rows": rows, "fault_cost": fault_cost(), "kernels": _kernels()}))
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="bnlab bench", description=(sys.modules[__package__].__doc__ or "").split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="Example: bnlab bench --preset quick --out runs/bench-quick   (a smoke run, ~1 min)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full",
                        help="full: the target shapes (~1–2 min on 2 idle cores); quick: a smoke run; tiny: seconds, for tests")
    parser.add_argument("--out", default="runs/bench", help="run folder for config.json, results.json, table.md, speedup.png")
    parser.add_argument("--child-layers", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    add_config_flags(parser, BenchConfig, PRESETS["full"])
    args = parser.parse_args(argv)
    if args.child_layers:
        return _child_layers(*args.child_layers)
    try:
        cfg = apply_overrides(PRESETS[args.preset], overrides_from_args(args, BenchConfig))
    except ConfigError as exc:
        parser.error(str(exc))
    res = run(cfg, args.out, preset=args.preset)
    print(format_table_for_terminal(res))
    print(f"wrote {Path(args.out).resolve()}")
    return 0


def format_table_for_terminal(res: dict) -> str:
    from .report import format_report

    return format_report(res)
