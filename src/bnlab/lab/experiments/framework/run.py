"""Running an experiment: train every (arm, seed), judge the checks, write every output.

Files written into the run folder, all atomically:

- ``config.json`` first: the resolved config, the arms and the pre-registered checks;
- ``results.json``: ``verdict``, ``checks`` (statement, estimate, ci_low, ci_high,
  min_effect, outcome, ...), ``seeds``, per-seed values of every arm, tables, figures;
- ``series.json``: the per-seed curves the figures are drawn from;
- ``results.md`` and ``report.html``: the experiment's section as Markdown and as a page;
- with a control (``with_control=True``): ``control/`` holds the negative control's run,
  whose baseline arm is this run's (same seeds, same numbers: it is not trained twice).
"""
from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Any

import torch

from ...report.render import render_page, section_markdown
from ...report.verdict import VERDICT_RULE
from ...config import config_to_dict
from ...runs.identity import run_identity
from ...runs.runfiles import run_metadata, write_json, write_text
from .api import (Context, Experiment, Results, SeedResult, config_record, control_arms,
                  evaluate_checks, part_outcomes, train_all)

__all__ = ["run", "run_with_control", "results_record"]


def _arm_record(results: Results, name: str) -> dict[str, Any]:
    arm, runs = results.arms[name], results.runs[name]
    metrics = list(dict.fromkeys(k for r in runs for k in r.metrics))
    return {
        "label": arm.label, "baseline": arm.baseline, "seeds": results.seeds[name],
        "status": [r.status for r in runs], "seconds": [round(r.seconds, 3) for r in runs],
        "per_seed": {m: [r.metrics.get(m) for r in runs] for m in metrics},
    }


def results_record(exp: Experiment, cfg, results: Results, *, preset: str | None, control: bool,
                   figures=(), seconds: float = 0.0) -> dict[str, Any]:
    """The content of ``results.json`` for ``results``."""
    verdict_, checks = evaluate_checks(exp.checks(cfg), results, exp.parts)
    parts = part_outcomes(checks)
    return {
        "experiment": exp.name, "title": exp.title, "claim": exp.claim, "source": exp.source,
        "preset": preset, "control": control, "verdict": verdict_, "rule": VERDICT_RULE,
        "checks": checks,
        "parts": {p: {"text": exp.parts.get(p, p), "verdict": v} for p, v in parts.items()},
        "seeds": list(cfg.seeds),
        "arms": {name: _arm_record(results, name) for name in results.arms},
        "tables": [] if control else [dict(t) for t in exp.tables(cfg, results)],
        "published": [dict(t) for t in exp.published()],
        "figures": [dict(f) for f in figures],
        "notes": [] if control else list(exp.notes(cfg, results)),
        "deviations": list(exp.deviations(cfg)) + list(exp.preset_changes.get(preset, ())),
        "seconds": round(seconds, 2),
        "budget_s": exp.budget_s,
        "finished": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _write_outputs(out_dir: Path, record: dict[str, Any], results: Results) -> None:
    series = {name: [{"seed": s, **r.series} for s, r in zip(results.seeds[name], runs)]
              for name, runs in results.runs.items()}
    write_json(out_dir / "series.json", series)
    write_json(out_dir / "results.json", record)
    write_text(out_dir / "results.md", section_markdown(record))
    write_text(out_dir / "report.html", render_page([(record, out_dir)]))


def run(exp: Experiment, cfg, out_dir: str | Path, *, preset: str | None = None, control: bool = False,
        resume: bool = False, reuse: Results | None = None, data: Any = None,
        figures: bool | None = None) -> tuple[dict[str, Any], Results]:
    """Run ``exp`` with ``cfg`` into ``out_dir``; return (results.json content, :class:`Results`).

    ``control=True``: every treatment arm is the baseline network on other seeds.
    ``reuse``: a finished :class:`Results` whose arms with unchanged seeds are taken, not retrained.
    ``figures``: draw the experiment's figures (default: yes, except for a control).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = run_identity("experiment", exp.name + ("/control" if control else ""), preset, config_to_dict(cfg))
    write_json(out_dir / "config.json", {**config_record(exp, cfg, preset, control), "identity": identity,
                                         "meta": run_metadata()})
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    try:
        ctx = Context(out_dir=out_dir, data=exp.load(cfg) if data is None else data, resume=resume,
                      control=control)
        plan = control_arms(exp, cfg) if control else [(a, a, 0) for a in exp.arms(cfg)]
        results = train_all(exp, cfg, ctx, plan, reuse=reuse)
        figs = exp.figures(cfg, results, out_dir) if (not control if figures is None else figures) else ()
    finally:
        torch.set_num_threads(threads)
    record = results_record(exp, cfg, results, preset=preset, control=control, figures=figs,
                            seconds=time.perf_counter() - t0)
    record["identity"] = identity
    _write_outputs(out_dir, record, results)
    return record, results


def run_with_control(exp: Experiment, cfg, out_dir: str | Path, *, preset: str | None = None,
                     resume: bool = False) -> dict[str, Any]:
    """The run and its negative control (in ``out_dir/control``, sharing the baseline arm).

    The run's ``results.json`` gets ``"control": {"verdict", "checks", "path"}``.
    """
    out_dir = Path(out_dir)
    data = exp.load(cfg)  # loaded once for both runs
    record, results = run(exp, cfg, out_dir, preset=preset, resume=resume, data=data)
    ctl, _ = run(exp, cfg, out_dir / "control", preset=preset, control=True, resume=resume,
                 reuse=results, data=data)
    record["control_summary"] = {
        "verdict": ctl["verdict"], "path": "control/results.json",
        "checks": [{k: v for k, v in c.items() if not k.endswith("_values")} for c in ctl["checks"]],
    }
    record["seconds"] = round(record["seconds"] + ctl["seconds"], 2)
    _write_outputs(out_dir, record, results)
    return record


def seed_result(metrics: dict[str, float], series: dict[str, Any] | None = None,
                status: str = "completed") -> SeedResult:
    """Shorthand for :class:`SeedResult`."""
    return SeedResult(metrics=dict(metrics), series=dict(series or {}), status=status)
