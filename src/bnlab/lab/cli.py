"""The ``bnlab`` command: ``list | run EXP | reproduce | train | compare | data | build | bench``.

A thin entry point: it parses flags (an experiment's flags come from its frozen config,
:mod:`bnlab.lab.config`) and calls the subcommand's function in :mod:`bnlab.lab.commands`,
which calls importable functions (:func:`~bnlab.lab.experiments.run_experiment`,
:func:`~bnlab.lab.engine.train_job.run_training`, :func:`~bnlab.lab.compare.compare_runs`).

Errors are one line ``bnlab: error: ...`` on stderr naming the flag or path and what to
do, never a traceback (an unexpected exception, a bug, is one ``bnlab: internal error`` line;
``BNLAB_DEBUG=1`` shows its traceback). Exit status: 0 success; 2 the command line cannot work (unknown
names, bad values, an unusable ``--out``, a ``--resume`` with other settings); 1 the
work started and failed (data, disk, lock, corrupt files, a run that diverged);
130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from . import commands as C
from .config import ConfigError, add_config_flags

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_FAILED = C.EXIT_FAILED


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _version() -> str:
    import torch

    import bnlab

    return f"bnlab {bnlab.__version__} (torch {torch.__version__}, Python {sys.version.split()[0]})"


def _out_flag(p: argparse.ArgumentParser, default: Path | None, what: str) -> None:
    p.add_argument("--out", type=Path, default=default, help=what)


def _resume_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoints (same settings only)")
    p.add_argument("--extend", action="store_true",
                   help="with --resume: train a run for more --steps (the only setting that may change)")


def _experiments(argv: Sequence[str]) -> dict:
    """The experiments ``bnlab run`` needs: the one named on the command line, else all."""
    from .experiments import REGISTRY, experiments, get_experiment

    if argv[:1] != ["run"]:
        return {}
    if len(argv) > 1 and argv[1] in REGISTRY:  # import only that experiment's module
        return {argv[1]: get_experiment(argv[1])}
    return experiments()


def _add_run(sub, argv: Sequence[str]) -> None:
    """bnlab run EXP: one sub-parser per experiment, flags from its config (only for ``run``)."""
    run = sub.add_parser("run", help="run one experiment",
                         description="Run one experiment with a preset; flags override its fields.")
    run_sub = run.add_subparsers(dest="experiment", metavar="EXP", required=True)
    for name, exp in _experiments(argv).items():
        ep = run_sub.add_parser(name, help=exp.claim, description=exp.claim)
        ep.add_argument("--preset", choices=sorted(exp.presets), default="quick",
                        help="named settings to start from (default: quick)")
        _out_flag(ep, None, f"run folder (default: runs/{name}-PRESET)")
        _resume_flags(ep)
        ep.add_argument("--control", action="store_true",
                        help="run the negative control only: the baseline network in every treatment arm's place")
        add_config_flags(ep, exp.config_cls, exp.presets["quick"])


def _add_reproduce(sub) -> None:
    """bnlab reproduce."""
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
    rep.add_argument("--jobs", type=int, default=1, metavar="N",
                     help="run N experiments at a time in worker processes (default: 1; 2 fills a 2-core machine)")
    rep.add_argument("--threads", type=int, default=None,
                     help="torch CPU threads per experiment (default: each preset's; 0: automatic)")
    rep.add_argument("--beside", type=Path, default=None, metavar="DIR",
                     help="folder of another finished reproduce run (e.g. docs/results/full) whose estimates are "
                          "shown beside this run's, each column labelled with its own preset and code version")


def _add_train(sub) -> None:
    """bnlab train (its flags come from TrainConfig)."""
    from .engine.train_job import TrainConfig

    tr = sub.add_parser("train", help="train one model (torchrun-ready)",
                        description="Train a model on a dataset with a norm layer and optimizer. "
                                    "Data parallel: torchrun --nproc-per-node 2 -m bnlab train ...")
    _out_flag(tr, Path("runs/train"), "run folder (default: runs/train)")
    _resume_flags(tr)
    tr.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                    help="distributed runs: give up when a process waits this long for the others "
                         "(default: 300)")
    add_config_flags(tr, TrainConfig, TrainConfig())


def _add_tools(sub) -> None:
    """compare, data, build and bench."""
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


def _build_parser(argv: Sequence[str] = ()) -> _Parser:
    """The parser; experiment modules are imported only for ``run`` (their flags come from them)."""
    p = _Parser(prog="bnlab", description="Batch Normalization lab: reproduce Ioffe & Szegedy (2015) "
                                           "and its successors' claims.",
                epilog="Main command: `bnlab reproduce` (every experiment's quick preset, report.html).")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("list", help="list experiments and their presets",
                   description="List the registered experiments, the claim each tests, and presets.")
    _add_run(sub, list(argv))
    _add_reproduce(sub)
    _add_train(sub)
    _add_tools(sub)
    return p


def _flagify(message: str) -> str:
    """``batch_size must be ...`` -> ``--batch-size must be ...`` (the flag a person typed)."""
    return re.sub(r"^([a-z][a-z0-9]*(?:_[a-z0-9]+)*) (must|exceeds|is not)\b",
                  lambda m: "--" + m.group(1).replace("_", "-") + " " + m.group(2), message)


_COMMANDS = {"list": lambda a: C.cmd_list(), "run": C.cmd_run, "reproduce": C.cmd_reproduce,
             "train": C.cmd_train, "compare": C.cmd_compare, "build": lambda a: C.cmd_build()}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bnlab`` console script and of ``python -m bnlab``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["bench"]:
            return C.cmd_bench(argv[1:])
        if argv[:1] == ["data"]:
            return C.cmd_data(argv[1:])
        args = _build_parser(argv).parse_args(argv)
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"bnlab: error: {_flagify(C.one_line(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        print(f"bnlab: error: {C.one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("bnlab: interrupted (checkpoints kept: rerun with --resume to continue)", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback on request
        if os.environ.get("BNLAB_DEBUG"):
            raise
        print(f"bnlab: internal error: {type(exc).__name__}: {C.one_line(exc)} (a bug in bnlab; "
              "set BNLAB_DEBUG=1 to see the traceback)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
