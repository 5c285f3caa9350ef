"""The ``bnlab`` command: ``list | run EXP | reproduce | train | compare | data | build | bench``.

A thin entry point: it parses flags into the typed configs of :mod:`bnlab.lab.config` and
calls importable functions (:func:`~bnlab.lab.experiments.run_experiment`,
:func:`~bnlab.lab.engine.train_job.run_training`, :func:`~bnlab.lab.compare.compare_runs`).
Every run folder is held by a :class:`~bnlab.lab.runs.session.RunSession` (checked,
locked, tidied, removed again if the run fails before it has checkpoints).

Errors are one line ``bnlab: error: ...`` on stderr naming the flag or path and what to
do, never a traceback. Exit status: 0 success; 2 the command line cannot work (unknown
names, bad values, an unusable ``--out``, a ``--resume`` with other settings); 1 the
work started and failed (data, disk, lock, corrupt files, a run that diverged);
130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .config import ConfigError, add_config_flags, apply_overrides, config_to_dict, overrides_from_args

__all__ = ["main", "default_threads"]

EXIT_USAGE = 2
EXIT_FAILED = 1


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _version() -> str:
    import torch

    import bnlab

    return f"bnlab {bnlab.__version__} (torch {torch.__version__}, Python {sys.version.split()[0]})"


def default_threads() -> int:
    """Torch CPU threads for a lab run when ``--threads 0``: never a pathological choice.

    The CPUs this process may use minus those already busy (the 1-minute load average,
    rounded), at least 1 and at most 4 (the lab's networks are small: more threads mostly
    add synchronisation). On an oversubscribed machine this is 1: there, torch's default
    of one thread per core spins waiting for cores that other processes hold (on a
    2-core machine at load 6, 100 MLP steps took ~3 s with 2 threads, ~0.3 s with 1).
    ``BNLAB_THREADS`` overrides.
    """
    env = os.environ.get("BNLAB_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = round(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, min(cpus - busy, 4))


def _set_threads(requested: int) -> int:
    import torch

    n = requested or default_threads()
    torch.set_num_threads(n)
    return n


def _out_flag(p: argparse.ArgumentParser, default: Path | None, what: str) -> None:
    p.add_argument("--out", type=Path, default=default, help=what)


def _resume_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoints (same settings only)")
    p.add_argument("--extend", action="store_true",
                   help="with --resume: train a run for more --steps (the only setting that may change)")


def _build_parser(command: str | None = None) -> _Parser:
    """The parser; experiment modules are imported only for ``run`` (their flags come from them)."""
    from .engine.train_job import TrainConfig

    p = _Parser(prog="bnlab", description="Batch Normalization lab: reproduce Ioffe & Szegedy (2015) "
                                           "and its successors' claims.",
                epilog="Main command: `bnlab reproduce` (every experiment's quick preset, report.html).")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("list", help="list experiments and their presets",
                   description="List the registered experiments, the claim each tests, and presets.")

    run = sub.add_parser("run", help="run one experiment",
                         description="Run one experiment with a preset; flags override its fields.")
    run_sub = run.add_subparsers(dest="experiment", metavar="EXP", required=True)
    for name, exp in (_experiments() if command == "run" else {}).items():
        ep = run_sub.add_parser(name, help=exp.claim, description=exp.claim)
        ep.add_argument("--preset", choices=sorted(exp.presets), default="quick",
                        help="named settings to start from (default: quick)")
        _out_flag(ep, None, f"run folder (default: runs/{name}-PRESET)")
        _resume_flags(ep)
        ep.add_argument("--control", action="store_true",
                        help="run the negative control only: the baseline network in every treatment arm's place")
        add_config_flags(ep, exp.config_cls, exp.presets["quick"])

    rep = sub.add_parser("reproduce", help="run every experiment + results.md + report.html",
                         description="Run every registered experiment (quick preset by default), "
                                     "reusing finished results of identical runs, and write "
                                     "results.md and report.html.")
    _out_flag(rep, Path("runs/reproduce"), "output folder (default: runs/reproduce)")
    rep.add_argument("--preset", default="quick", help="preset for every experiment (default: quick)")
    rep.add_argument("--only", nargs="+", metavar="EXP", default=None, help="run only these experiments")
    rep.add_argument("--resume", action="store_true",
                     help="continue unfinished runs from their checkpoints (automatic when settings and code match)")
    rep.add_argument("--force", action="store_true", help="rerun even experiments with finished results")
    rep.add_argument("--threads", type=int, default=None,
                     help="torch CPU threads per experiment (default: each preset's; 0: automatic)")

    tr = sub.add_parser("train", help="train one model (torchrun-ready)",
                        description="Train a model on a dataset with a norm layer and optimizer. "
                                    "Data parallel: torchrun --nproc-per-node 2 -m bnlab train ...")
    _out_flag(tr, Path("runs/train"), "run folder (default: runs/train)")
    _resume_flags(tr)
    tr.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                    help="distributed runs: give up when a process waits this long for the others "
                         "(default: 300)")
    add_config_flags(tr, TrainConfig, TrainConfig())

    cmp_ = sub.add_parser("compare", help="compare two runs' metrics (table + figure)",
                          description="Compare the metrics.jsonl of two run folders: a table of the "
                                      "last values and a figure of the curves.")
    cmp_.add_argument("run_a", type=Path, metavar="RUN_A")
    cmp_.add_argument("run_b", type=Path, metavar="RUN_B")
    cmp_.add_argument("--metrics", nargs="+", default=None, metavar="KEY",
                      help="metrics to compare (default: every numeric metric both runs log)")
    cmp_.add_argument("--figure", default="compare.png", metavar="FILE",
                      help="where to write the figure (default: compare.png; '' for none)")

    sub.add_parser("data", help="list, fetch or verify datasets (bnlab data --help)", add_help=False,
                   prefix_chars="\0")  # every argument goes to the data command's own parser
    sub.add_parser("build", help="build (and cache) the compiled CPU kernels now",
                   description="Compile bnlab's C++ kernels into the build cache (otherwise built on first use).")
    sub.add_parser("bench", help="kernel speed benchmarks (bnlab bench --help)", add_help=False,
                   prefix_chars="\0")  # every argument goes to the benchmark's own parser
    return p


def _experiments() -> dict:
    from .experiments import experiments

    return experiments()


def _cmd_list() -> int:
    from .experiments import experiments

    for name, exp in experiments().items():
        print(f"{name}: {exp.claim}")
        for preset, cfg in exp.presets.items():
            d = config_to_dict(cfg)
            keys = [k for k in ("dataset", "steps", "batch_size", "optimizer", "lr") if k in d]
            print(f"    --preset {preset:<6} " + ", ".join(f"{k}={d[k]}" for k in keys))
    return 0


def _start(session, out: Path, config: dict[str, Any], resume: bool, extend: bool,
           preset: str | None = None) -> bool:
    """Validate ``--resume``/``--extend`` against the folder; clear stale results. Returns resume."""
    from .runs.resume import check_config_change
    from .runs.session import remove_stale_results

    if extend and not resume:
        raise ConfigError("--extend continues a run: use it together with --resume")
    if resume:
        check_config_change(out, config, extend=extend, preset=preset)
    else:
        remove_stale_results(out)
    if session.lock is not None and session.lock.stale_pid is not None:
        print(f"note: {out} had a lock of pid {session.lock.stale_pid}, which is no longer running; taken over")
    return resume


def _stamp(out: Path, identity: dict[str, str], results: dict) -> None:
    """Make sure results.json carries the run's identity (the framework stamps it; ``train`` does not)."""
    from .runs.runfiles import write_json

    if results.get("identity") != identity:
        results["identity"] = identity
        write_json(out / "results.json", results)


def _cmd_run(args) -> int:
    from .experiments import get_experiment, run_experiment
    from .report.render import verdict_line
    from .runs.identity import run_identity
    from .runs.session import RunSession

    exp = get_experiment(args.experiment)
    cfg = _with_threads(apply_overrides(exp.presets[args.preset], overrides_from_args(args, exp.config_cls)))
    out = args.out or Path("runs") / f"{exp.name}-{args.preset}{'-control' if args.control else ''}"
    identity = run_identity("experiment", exp.name + ("/control" if args.control else ""), args.preset,
                            config_to_dict(cfg))
    with RunSession(out) as session:
        resume = _start(session, out, config_to_dict(cfg), args.resume, args.extend, args.preset)
        print(f"bnlab run {exp.name} --preset {args.preset}{' --control' if args.control else ''} -> {out}/")
        rec = run_experiment(exp, cfg, out, preset=args.preset, resume=resume, control=args.control,
                             with_control=not args.control)
        _stamp(out, identity, rec)
    print(verdict_line(rec))
    print(f"report: {out / 'report.html'}  results: {out / 'results.json'}  metrics: {out / 'metrics.jsonl'}")
    return 0


def _with_threads(cfg, requested: int | None = None):
    """``cfg`` with ``threads`` resolved: ``requested`` if given, 0 -> :func:`default_threads`."""
    if not hasattr(cfg, "threads"):
        return cfg
    n = (cfg.threads if requested is None else requested) or default_threads()
    return cfg if n == cfg.threads else apply_overrides(cfg, {"threads": n})


def _reproduce_one(exp, preset: str, run_dir: Path, args) -> Any:
    from .experiments import run_experiment
    from .runs.identity import run_identity
    from .runs.resume import finished_results, same_config
    from .runs.session import discard_failed, remove_stale_results

    cfg = _with_threads(exp.presets[preset], args.threads)
    identity = run_identity("experiment", exp.name, preset, config_to_dict(cfg))
    outcome = None if args.force else finished_results(run_dir, identity)
    if outcome is not None:
        print(f"    finished results of this exact run (settings and code) found in {run_dir}/, "
              "reused (--force reruns)", flush=True)
        return outcome
    created = not run_dir.exists()
    resume = not args.force and (args.resume or same_config(run_dir, identity))
    if not resume:
        remove_stale_results(run_dir)
    try:
        outcome = run_experiment(exp, cfg, run_dir, preset=preset, resume=resume, with_control=True)
    except BaseException:
        discard_failed(run_dir, created)
        raise
    _stamp(run_dir, identity, outcome)
    return outcome


def _cmd_reproduce(args) -> int:
    from .experiments import experiments
    from .report.render import verdict_line
    from .report.reproduce import not_run_record, write_reproduce
    from .runs.session import RunSession

    registry = experiments()
    names = args.only or list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ConfigError(f"--only: unknown experiment(s) {unknown}; choose from {list(registry)}")
    for name in names:
        if args.preset not in registry[name].presets:
            raise ConfigError(f"--preset {args.preset}: experiment {name} has no such preset; "
                              f"choose from {sorted(registry[name].presets)}")
    t0, entries, failed = time.perf_counter(), [], 0
    with RunSession(args.out):
        print(f"bnlab reproduce --preset {args.preset} -> {args.out}/", flush=True)
        for i, name in enumerate(names, 1):
            exp = registry[name]
            print(f"[{i}/{len(names)}] {name} ({args.preset}): {exp.claim}", flush=True)
            try:
                outcome = _reproduce_one(exp, args.preset, args.out / name, args)
                print("    " + verdict_line(outcome), flush=True)
            except (ConfigError, RuntimeError, ValueError, OSError) as exc:
                failed += 1
                outcome = exc
                print(f"bnlab: {name} failed: {_one_line(exc)}", file=sys.stderr, flush=True)
            entries.append((exp, outcome, name))
        md, page = write_reproduce(args.out, entries, args.preset, time.perf_counter() - t0)
    print("\nverdicts:")
    for exp, outcome, _ in entries:
        print("  " + verdict_line(outcome if isinstance(outcome, dict) else not_run_record(exp, outcome)))
    print(f"summary: {md}\nreport:  {page}  (open it in a browser)")
    return EXIT_FAILED if failed else 0


def _check_model_fits(cfg) -> None:
    """``--model`` must accept ``--dataset``'s images: one forward pass on zeros, before any work."""
    import torch

    from .data import dataset_info, dataset_names
    from .models import build_model, model_names

    if cfg.dataset not in dataset_names():
        raise ConfigError(f"--dataset {cfg.dataset}: unknown dataset; choose from {list(dataset_names())}")
    info = dataset_info(cfg.dataset)

    def fits(name: str) -> bool:
        try:
            with torch.no_grad():
                build_model(name, "none", in_shape=tuple(info.shape), num_classes=info.num_classes).eval()(
                    torch.zeros(1, *info.shape))
            return True
        except (RuntimeError, ValueError):
            return False

    if not fits(cfg.model):
        shape = "×".join(map(str, info.shape))
        good = [m for m in model_names() if m != cfg.model and fits(m)]
        raise ConfigError(f"--model {cfg.model} does not take --dataset {cfg.dataset}'s {shape} images; "
                          f"models that do: {', '.join(good) or 'none'}")


def _cmd_train(args) -> int:
    from .engine.train_job import TrainConfig, run_training
    from .runs.identity import run_identity
    from .runs.session import RunSession

    cfg = apply_overrides(TrainConfig(), overrides_from_args(args, TrainConfig))
    if args.timeout <= 0:
        raise ConfigError(f"--timeout must be > 0 seconds, got {args.timeout}")
    _check_model_fits(cfg)
    main_rank = int(os.environ.get("RANK", "0")) == 0  # rank 0 of torchrun, or a plain run
    with _distributed(args.timeout), RunSession(args.out, lock=main_rank) as session:
        resume = _start(session, args.out, config_to_dict(cfg), args.resume, args.extend)
        _set_threads(cfg.threads)
        res = run_training(cfg, args.out, resume=resume)
        if main_rank:
            _stamp(args.out, run_identity("train", cfg.model, None, config_to_dict(cfg)), res)
    if main_rank:
        acc = res["final_test_acc"]
        print(f"{res['status']}: {res['steps']} steps, final test accuracy "
              f"{'—' if acc is None else f'{acc:.4f}'}, results in {args.out}/results.json")
    return 0 if res["status"] == "completed" else EXIT_FAILED


class _distributed:
    """Join torchrun's process group with a collective timeout (no-op for a plain run)."""

    def __init__(self, timeout: float) -> None:
        self.timeout, self.joined = timeout, False

    def __enter__(self):
        import datetime

        import torch.distributed as dist

        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
            try:
                dist.init_process_group("gloo", init_method="env://",
                                        timeout=datetime.timedelta(seconds=self.timeout))
            except Exception as exc:  # noqa: BLE001 - torch raises several types here
                raise RuntimeError(f"distributed: could not join the other processes within --timeout "
                                   f"{self.timeout:g} s ({_one_line(exc)}); check that every rank started") from None
            self.joined = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.joined:
            import torch.distributed as dist

            dist.destroy_process_group()
            if exc is not None and "timed out" in str(exc).lower():
                raise RuntimeError(f"distributed: another process did not answer within --timeout "
                                   f"{self.timeout:g} s ({_one_line(exc)}); is a rank stuck or dead?") from None


def _cmd_compare(args) -> int:
    from .compare import compare_runs

    text, figure = compare_runs(args.run_a, args.run_b, metrics=args.metrics,
                                figure=Path(args.figure) if args.figure else None)
    print(text)
    if figure is not None:
        print(f"figure: {figure}")
    return 0


def _cmd_data(argv: Sequence[str]) -> int:
    from .data.cli import main as data_main

    return int(data_main(list(argv), prog="bnlab data") or 0)


def _cmd_build() -> int:
    try:
        from ..kernels import build
    except ImportError:
        raise RuntimeError("this bnlab has no build step for compiled kernels (bnlab.kernels.build is "
                           "missing): nothing to build, the PyTorch reference kernels are used") from None
    print(build(verbose=True))
    return 0


def _cmd_bench(argv: Sequence[str]) -> int:
    try:
        from .bench import main as bench_main
    except ImportError as exc:
        raise ConfigError(f"bnlab bench is not available in this build ({exc})") from None
    return int(bench_main(list(argv)) or 0)


def _one_line(exc: BaseException) -> str:
    """An exception as one line: the message, or ``path: reason`` for OS errors."""
    from .runs.session import is_disk_full

    if is_disk_full(exc) and not getattr(exc, "filename", None):
        return "no space left on device while writing the run's files: free some space or choose another --out"
    if isinstance(exc, OSError) and str(exc).startswith("[Errno") and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, KeyError) and exc.args:
        return f"missing entry {exc.args[0]!r}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def _flagify(message: str) -> str:
    """``batch_size must be ...`` -> ``--batch-size must be ...`` (the flag a person typed)."""
    return re.sub(r"^([a-z][a-z0-9]*(?:_[a-z0-9]+)*) (must|exceeds|is not)\b",
                  lambda m: "--" + m.group(1).replace("_", "-") + " " + m.group(2), message)


_COMMANDS = {"list": lambda a: _cmd_list(), "run": _cmd_run, "reproduce": _cmd_reproduce,
             "train": _cmd_train, "compare": _cmd_compare, "build": lambda a: _cmd_build()}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bnlab`` console script and of ``python -m bnlab``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["bench"]:
            return _cmd_bench(argv[1:])
        if argv[:1] == ["data"]:
            return _cmd_data(argv[1:])
        args = _build_parser(argv[0] if argv else None).parse_args(argv)
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"bnlab: error: {_flagify(_one_line(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        print(f"bnlab: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("bnlab: interrupted (checkpoints kept: rerun with --resume to continue)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
