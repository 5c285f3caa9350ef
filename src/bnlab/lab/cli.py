"""The ``bnlab`` command: ``list | run EXP | reproduce | train | bench``.

A thin entry point: it parses flags into the typed configs of :mod:`bnlab.lab.config` and
calls importable functions (:func:`~bnlab.lab.experiments.run_experiment`,
:func:`~bnlab.lab.train_job.run_training`). Bad arguments and invalid settings end with one
line ``bnlab: error: ...`` on stderr and a non-zero exit status, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from .config import ConfigError, add_config_flags, apply_overrides, overrides_from_args

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_FAILED = 1


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _build_parser() -> _Parser:
    from .experiments import experiments
    from .train_job import TrainConfig

    p = _Parser(prog="bnlab", description="The bnlab lab: reproduce Ioffe & Szegedy (2015).",
                epilog="Main command: `bnlab reproduce` (every experiment's quick preset).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser("list", help="list experiments and their presets",
                   description="List the registered experiments, the claim each tests, and presets.")

    run = sub.add_parser("run", help="run one experiment",
                         description="Run one experiment with a preset; flags override its fields.")
    run_sub = run.add_subparsers(dest="experiment", metavar="EXP", required=True)
    for name, exp in experiments().items():
        ep = run_sub.add_parser(name, help=exp.claim, description=exp.claim)
        ep.add_argument("--preset", choices=sorted(exp.presets), default="quick",
                        help="named settings to start from (default: quick)")
        ep.add_argument("--out", type=Path, default=None,
                        help=f"run folder (default: runs/{name}-PRESET)")
        ep.add_argument("--resume", action="store_true",
                        help="continue from the checkpoints in --out")
        add_config_flags(ep, exp.config_cls, exp.presets["quick"])

    rep = sub.add_parser("reproduce", help="run every experiment's quick preset + results.md",
                         description="Run every registered experiment (quick preset by default) "
                                     "and write results.md with the key numbers and figures.")
    rep.add_argument("--out", type=Path, default=Path("runs/reproduce"),
                     help="output folder (default: runs/reproduce)")
    rep.add_argument("--preset", default="quick", help="preset for every experiment (default: quick)")
    rep.add_argument("--only", nargs="+", metavar="EXP", default=None,
                     help="run only these experiments")
    rep.add_argument("--resume", action="store_true", help="continue from existing checkpoints")
    rep.add_argument("--force", action="store_true",
                     help="rerun experiments whose finished results exist (default: reuse them, "
                          "and resume unfinished ones from their checkpoints)")

    tr = sub.add_parser("train", help="train one model (torchrun-ready)",
                        description="Train a model on a dataset with a norm layer and optimizer. "
                                    "Data parallel: torchrun --nproc-per-node 2 -m bnlab train ...")
    tr.add_argument("--out", type=Path, default=Path("runs/train"),
                    help="run folder (default: runs/train)")
    tr.add_argument("--resume", action="store_true", help="continue from --out/checkpoints/model.pt")
    add_config_flags(tr, TrainConfig, TrainConfig())

    sub.add_parser("bench", help="kernel speed benchmarks (bnlab bench --help)", add_help=False,
                   prefix_chars="\0")  # every argument goes to the benchmark's own parser
    return p


def _cmd_list() -> int:
    from .config import config_to_dict
    from .experiments import experiments

    for name, exp in experiments().items():
        print(f"{name}: {exp.claim}")
        for preset, cfg in exp.presets.items():
            d = config_to_dict(cfg)
            keys = [k for k in ("dataset", "steps", "batch_size", "optimizer", "lr") if k in d]
            print(f"    --preset {preset:<6} " + ", ".join(f"{k}={d[k]}" for k in keys))
    return 0


def _cmd_run(args) -> int:
    from .experiments import get_experiment, run_experiment

    exp = get_experiment(args.experiment)
    cfg = apply_overrides(exp.presets[args.preset], overrides_from_args(args, exp.config_cls))
    out = args.out or Path("runs") / f"{exp.name}-{args.preset}"
    print(f"bnlab run {exp.name} --preset {args.preset} -> {out}/")
    results = run_experiment(exp, cfg, out, preset=args.preset, resume=args.resume)
    print(exp.summarize(results, out))
    print(f"results: {out / 'results.json'}  metrics: {out / 'metrics.jsonl'}")
    return 0


def _cmd_reproduce(args) -> int:
    from .experiments import experiments, run_experiment
    from .report import write_reproduce_report
    from .runs.resume import finished_results, same_config
    from .summary import write_results_md

    registry = experiments()
    names = args.only or list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ConfigError(f"unknown experiment(s) {unknown}; choose from {list(registry)}")
    t0, entries, failed = time.perf_counter(), [], 0
    for i, name in enumerate(names, 1):
        exp = registry[name]
        if args.preset not in exp.presets:
            raise ConfigError(f"experiment {name} has no preset {args.preset!r}")
        print(f"[{i}/{len(names)}] {name} ({args.preset}): {exp.claim}", flush=True)
        try:
            cfg, run_dir = exp.presets[args.preset], args.out / name
            outcome = None if args.force else finished_results(run_dir, name, cfg, args.preset)
            if outcome is not None:
                print(f"    finished results found in {run_dir}/, reused (--force reruns)", flush=True)
            else:
                resume = args.resume or (not args.force and same_config(run_dir, name, cfg, args.preset))
                outcome = run_experiment(exp, cfg, run_dir, preset=args.preset, resume=resume)
            print(exp.summarize(outcome, args.out / name), flush=True)
        except (ConfigError, RuntimeError, ValueError, OSError) as exc:
            failed += 1
            outcome = exc
            print(f"bnlab: {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        entries.append((exp, outcome, name))
    md = write_results_md(args.out, entries, args.preset, time.perf_counter() - t0)
    page = write_reproduce_report(args.out, entries, args.preset)
    print(f"summary: {md}  report: {page}  (figures in {args.out}/<experiment>/)")
    return EXIT_FAILED if failed else 0


def _cmd_train(args) -> int:
    from .train_job import TrainConfig, run_training

    cfg = apply_overrides(TrainConfig(), overrides_from_args(args, TrainConfig))
    res = run_training(cfg, args.out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # rank 0 of torchrun, or a plain run
        acc = res["final_test_acc"]
        print(f"{res['status']}: {res['steps']} steps, final test accuracy "
              f"{'—' if acc is None else f'{acc:.4f}'}, results in {args.out}/results.json")
    return 0 if res["status"] == "completed" else EXIT_FAILED


def _cmd_bench(argv: Sequence[str]) -> int:
    try:
        from .bench import main as bench_main
    except ImportError as exc:
        raise ConfigError(f"bnlab bench is not available in this build ({exc})") from None
    return int(bench_main(list(argv)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bnlab`` console script and of ``python -m bnlab``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["bench"]:
            return _cmd_bench(argv[1:])
        args = _build_parser().parse_args(argv)
        if args.command == "list":
            return _cmd_list()
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "reproduce":
            return _cmd_reproduce(args)
        if args.command == "train":
            return _cmd_train(args)
    except ConfigError as exc:
        print(f"bnlab: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"bnlab: error: {type(exc).__name__}: {msg}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("bnlab: interrupted", file=sys.stderr)
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
