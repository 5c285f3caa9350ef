"""What each ``bnlab`` subcommand does, once :mod:`bnlab.lab.cli` has parsed its flags.

Each ``cmd_*`` function takes the parsed arguments and returns the exit status. Run folders
are held by a :class:`~bnlab.lab.runs.session.RunSession` (checked, locked, tidied, removed
again if the run fails before it has checkpoints); ``--resume``/``--extend`` are validated
against the folder's ``config.json`` before any work; ``reproduce`` reuses a finished
experiment only when its ``results.json`` carries this run's identity.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .config import ConfigError, apply_overrides, config_to_dict, overrides_from_args

__all__ = ["default_threads", "one_line", "cmd_list", "cmd_run", "cmd_reproduce", "cmd_train", "cmd_compare",
           "cmd_data", "cmd_build", "cmd_bench", "EXIT_FAILED"]

EXIT_FAILED = 1

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


def cmd_list() -> int:
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
    elif session.lock is not None:  # the folder's writer (rank 0 under torchrun)
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


def cmd_run(args) -> int:
    from .experiments import get_experiment, run_experiment
    from .runs.identity import run_identity
    from .runs.session import RunSession

    exp = get_experiment(args.experiment)
    cfg = _with_threads(apply_overrides(exp.presets[args.preset], overrides_from_args(args, exp.config_cls)))
    _check_dataset(cfg)
    out = args.out or Path("runs") / f"{exp.name}-{args.preset}{'-control' if args.control else ''}"
    identity = run_identity("experiment", exp.name + ("/control" if args.control else ""), args.preset,
                            config_to_dict(cfg))
    with RunSession(out) as session:
        resume = _start(session, out, config_to_dict(cfg), args.resume, args.extend, args.preset)
        print(f"bnlab run {exp.name} --preset {args.preset}{' --control' if args.control else ''} -> {out}/")
        rec = run_experiment(exp, cfg, out, preset=args.preset, resume=resume, control=args.control,
                             with_control=not args.control)
        _stamp(out, identity, rec)
    print(show_verdict(rec))
    print(f"report: {out / 'report.html'}  results: {out / 'results.json'}  metrics: {out / 'metrics.jsonl'}")
    return 0


def _with_threads(cfg, requested: int | None = None):
    """``cfg`` with ``threads`` resolved: ``requested`` if given, 0 -> :func:`default_threads`."""
    if not hasattr(cfg, "threads"):
        return cfg
    n = (cfg.threads if requested is None else requested) or default_threads()
    return cfg if n == cfg.threads else apply_overrides(cfg, {"threads": n})


def cmd_reproduce(args) -> int:
    from .reproduce import reproduce

    return reproduce(args.out, args.only, args.preset, force=args.force, resume=args.resume,
                     threads=args.threads, jobs=args.jobs, beside=args.beside)


def _check_dataset(cfg) -> None:
    """A config's ``dataset`` must be a known name (a usage error, before any work)."""
    from .data import dataset_names

    name = getattr(cfg, "dataset", None)
    if name is not None and name not in dataset_names():
        raise ConfigError(f"--dataset {name}: unknown dataset; choose from {list(dataset_names())}")


def _check_model_fits(cfg) -> None:
    """``--model`` must accept ``--dataset``'s images: one forward pass on zeros, before any work."""
    import torch

    from .data import dataset_info
    from .models import build_model, model_names

    _check_dataset(cfg)
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


def cmd_train(args) -> int:
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
                                   f"{self.timeout:g} s ({one_line(exc)}); check that every rank started") from None
            self.joined = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.joined:
            import torch.distributed as dist

            if exc is None:
                dist.barrier()  # every rank finished: none tears its connections down under another
            dist.destroy_process_group()
            if exc is not None and "timed out" in str(exc).lower():
                raise RuntimeError(f"distributed: another process did not answer within --timeout "
                                   f"{self.timeout:g} s ({one_line(exc)}); is a rank stuck or dead?") from None


def cmd_compare(args) -> int:
    from .compare import compare_runs

    text, figure = compare_runs(args.run_a, args.run_b, metrics=args.metrics,
                                figure=Path(args.figure) if args.figure else None)
    print(text)
    if figure is not None:
        print(f"figure: {figure}")
    return 0


def cmd_data(argv: Sequence[str]) -> int:
    from .data.cli import main as data_main

    return int(data_main(list(argv), prog="bnlab data") or 0)


def cmd_build() -> int:
    try:
        from ..kernels import build
    except ImportError:
        raise RuntimeError("this bnlab has no build step for compiled kernels (bnlab.kernels.build is "
                           "missing): nothing to build, the PyTorch reference kernels are used") from None
    print(build(verbose=True))
    return 0


def cmd_bench(argv: Sequence[str]) -> int:
    try:
        from .bench import main as bench_main
    except ImportError as exc:
        raise ConfigError(f"bnlab bench is not available in this build ({exc})") from None
    return int(bench_main(list(argv)) or 0)


_COLOURS = {"reproduced": "32", "partly": "33", "inconclusive": "2", "contradicted": "31", "not run": "2"}


def show_verdict(rec: dict[str, Any]) -> str:
    """:func:`~bnlab.lab.report.render.verdict_line`, its verdict coloured on a terminal (not with NO_COLOR)."""
    from .report.render import verdict_line

    line = verdict_line(rec)
    code = _COLOURS.get(str(rec.get("verdict")))
    if code is None or os.environ.get("NO_COLOR") or not sys.stdout.isatty():
        return line
    word = f"{rec['experiment']}: {rec['verdict']}"
    return line.replace(word, f"{rec['experiment']}: \033[1;{code}m{rec['verdict']}\033[0m", 1)


def one_line(exc: BaseException) -> str:
    """An exception as one line: the message, or ``path: reason`` for OS errors."""
    from .runs.session import is_disk_full

    if is_disk_full(exc) and not getattr(exc, "filename", None):
        return "no space left on device while writing the run's files: free some space or choose another --out"
    if isinstance(exc, OSError) and str(exc).startswith("[Errno") and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, KeyError) and exc.args:
        return f"missing entry {exc.args[0]!r}"
    text = " ".join(str(exc).split()).removeprefix("bnlab: ") or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."
