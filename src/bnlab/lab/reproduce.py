"""``bnlab reproduce``: every experiment (run + negative control), then one report.

:func:`reproduce` holds the lock on ``--out`` for the whole run and, for each experiment:

- reuses ``out/EXP/results.json`` only when it carries this run's identity (same
  experiment, preset, every config field, code version) — ``force`` reruns;
- resumes an unfinished run of the same identity from its checkpoints;
- otherwise runs it afresh, under a lock on ``out/EXP`` too (so a ``bnlab run EXP
  --out out/EXP`` cannot write there at the same time), and removes the folder again
  if it created it and the run failed.

With ``jobs > 1`` the experiments run in that many worker processes (each experiment
uses its preset's ``threads``, 1 by default, so 2 jobs fill 2 cores); output lines and
the report keep the registry's order. An experiment that fails, or whose module does
not import, is reported ``not run`` and the others still run. The report
(``results.md``, ``report.html``) and one verdict line per experiment come last.
"""
from __future__ import annotations

import os
import sys
import time
import types
from pathlib import Path
from typing import Any, Sequence

from .config import ConfigError, config_to_dict

__all__ = ["reproduce", "reproduce_one"]

_FAILURES = (ConfigError, RuntimeError, ValueError, OSError)


def reproduce_one(exp, preset: str, run_dir: Path, *, force: bool = False, resume: bool = False,
                  threads: int | None = None, parent_pid: int | None = None) -> dict[str, Any]:
    """One experiment's results record: reused, resumed or freshly run (see the module doc)."""
    from .commands import _stamp, _with_threads
    from .experiments import run_experiment
    from .runs.identity import run_identity
    from .runs.lock import RunLock
    from .runs.resume import finished_results, same_config
    from .runs.session import discard_failed, remove_stale_results

    cfg = _with_threads(exp.presets[preset], threads)
    identity = run_identity("experiment", exp.name, preset, config_to_dict(cfg))
    outcome = None if force else finished_results(run_dir, identity)
    if outcome is not None:
        print(f"    {exp.name}: finished results of this exact run (settings and code) found in "
              f"{run_dir}/, reused (--force reruns)", flush=True)
        return outcome
    created = not run_dir.exists()
    resume = not force and (resume or same_config(run_dir, identity))
    try:
        with RunLock(run_dir, parent_pid=parent_pid):
            if not resume:
                remove_stale_results(run_dir)
            outcome = run_experiment(exp, cfg, run_dir, preset=preset, resume=resume, with_control=True)
    except BaseException:
        discard_failed(run_dir, created)
        raise
    _stamp(run_dir, identity, outcome)
    return outcome


def _load(names: Sequence[str]) -> dict[str, Any]:
    """name -> experiment, or (stand-in, exception) when its module does not import."""
    from .experiments import get_experiment

    out: dict[str, Any] = {}
    for name in names:
        try:
            out[name] = get_experiment(name)
        except Exception as exc:  # noqa: BLE001 - a broken module must not stop the other experiments
            stub = types.SimpleNamespace(name=name, title=name, claim="(its module failed to import)",
                                         source="", presets={})
            out[name] = (stub, exc)
    return out


def _in_worker(name: str, preset: str, run_dir: Path, opts: dict[str, Any], parent_pid: int) -> dict[str, Any]:
    """Run one experiment in a worker process (no progress bars: several would share a terminal)."""
    from .experiments import get_experiment

    os.environ["BNLAB_PROGRESS"] = "0"
    return reproduce_one(get_experiment(name), preset, run_dir, parent_pid=parent_pid, **opts)


def _run_all(names, loaded, out: Path, preset: str, opts: dict[str, Any], jobs: int):
    """Yield (name, record or exception) in ``names`` order, running ``jobs`` at a time."""
    from .commands import one_line

    pending = {}
    pool = None
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
        pending = {n: pool.submit(_in_worker, n, preset, out / n, opts, os.getpid())
                   for n in names if not isinstance(loaded[n], tuple)}
    try:
        for name in names:
            exp = loaded[name]
            if isinstance(exp, tuple):
                yield name, RuntimeError(f"cannot import experiment {name}: {one_line(exp[1])}")
                continue
            if pool is None:
                print(f"--- {name} ({preset}): {exp.claim}", flush=True)
            try:
                result = pending[name].result() if pool else reproduce_one(exp, preset, out / name, **opts)
            except _FAILURES as exc:
                result = exc
            except Exception as exc:  # noqa: BLE001 - e.g. a worker process that died
                result = RuntimeError(f"{type(exc).__name__}: {one_line(exc)}")
            yield name, result
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def expected_duration(loaded: dict[str, Any], preset: str, jobs: int = 1) -> str:
    """One line with the summed per-experiment estimates of ``preset`` (see ``Experiment.expected_s``)."""
    known, unknown = 0.0, []
    for name, exp in loaded.items():
        est = None if isinstance(exp, tuple) else exp.expected_seconds(preset)
        if est is None:
            unknown.append(name)
        else:
            known += est
    wall = known / max(1, min(jobs, len(loaded)))
    text = (f"expected duration: ~{wall / 60:.0f} min, one thread per experiment (the sum of the per-experiment "
            f"estimates, runs and controls, ÷ jobs; a busy machine takes longer; Ctrl-C stops, --resume continues)")
    if unknown:
        text += f"; no estimate for {', '.join(unknown)}"
    return text


def reproduce(out: Path, only: Sequence[str] | None, preset: str, *, force: bool = False, resume: bool = False,
              threads: int | None = None, jobs: int = 1, beside: Path | None = None) -> int:
    """Run the experiments (``only`` or all) into ``out``; write the report; return the exit status.

    ``beside``: the folder of another reproduce run (e.g. ``docs/results/full``) whose estimates the
    report and the closing verdict lines show next to this run's (:mod:`bnlab.lab.report.beside`).
    """
    from .commands import EXIT_FAILED, one_line, show_verdict
    from .experiments import REGISTRY
    from .report.beside import beside_lines, beside_verdict, load_beside, run_label
    from .report.reproduce import not_run_record, write_reproduce
    from .runs.session import RunSession

    names = list(only or REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ConfigError(f"--only: unknown experiment(s) {unknown}; choose from {list(REGISTRY)}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if beside is not None and not Path(beside).is_dir():
        raise ConfigError(f"--beside {beside}: no such folder; give the --out folder of a finished reproduce run")
    loaded = _load(names)
    for name, exp in loaded.items():
        if not isinstance(exp, tuple) and preset not in exp.presets:
            raise ConfigError(f"--preset {preset}: experiment {name} has no such preset; "
                              f"choose from {sorted(exp.presets)}")
    opts = {"force": force, "resume": resume, "threads": threads}
    t0, entries, failed = time.perf_counter(), [], 0
    with RunSession(out):
        print(f"bnlab reproduce --preset {preset} -> {out}/ ({len(names)} experiments, "
              f"{min(jobs, len(names))} at a time)", flush=True)
        print(expected_duration(loaded, preset, jobs), flush=True)
        for i, (name, result) in enumerate(_run_all(names, loaded, out, preset, opts, jobs), 1):
            exp = loaded[name][0] if isinstance(loaded[name], tuple) else loaded[name]
            if isinstance(result, BaseException):
                failed += 1
                print(f"bnlab: {name} failed: {one_line(result)}", file=sys.stderr, flush=True)
            print(f"[{i}/{len(names)}] " + show_verdict(result if isinstance(result, dict)
                                                         else not_run_record(exp, result)), flush=True)
            entries.append((exp, result, name))
        md, page = write_reproduce(out, entries, preset, time.perf_counter() - t0, beside=beside)
    others = load_beside(beside, [name for _, _, name in entries]) if beside is not None else {}
    print("\nverdicts:")
    for exp, result, name in entries:
        print("  " + show_verdict(result if isinstance(result, dict) else not_run_record(exp, result)))
        if name in others:
            b = others[name]
            print(f"    beside ({b.folder}): " + (f"{beside_verdict(b.record)}, {run_label(b.record)}"
                                                  if b.record is not None else b.reason))
            if b.record is not None and isinstance(result, dict):
                for line in beside_lines(result, b.record):
                    print("      " + line)
    print(f"summary: {md}\nreport:  {page}  (open it in a browser)")
    return EXIT_FAILED if failed else 0
