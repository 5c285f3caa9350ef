"""The summary of a ``bnlab reproduce`` run: ``results.md`` and ``report.html`` over all experiments."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Sequence

from ..runs.runfiles import run_metadata, write_text
from .beside import load_beside
from .render import page_markdown, render_page, verdict_line

__all__ = ["not_run_record", "write_reproduce", "verdict_lines"]


def not_run_record(exp, error: BaseException | str) -> dict[str, Any]:
    """The record of an experiment that failed or was not run (verdict ``not run``)."""
    why = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return {"experiment": exp.name, "title": exp.title, "claim": exp.claim, "source": exp.source,
            "preset": None, "control": False, "verdict": "not run", "checks": [], "parts": {},
            "seeds": [], "arms": {}, "figures": [], "tables": [], "published": [],
            "deviations": [f"not run: {why}"], "seconds": 0}


def write_reproduce(out_dir: str | Path, entries: Sequence[tuple[Any, Any, str]], preset: str,
                    seconds: float, beside: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``out_dir/results.md`` and ``out_dir/report.html``; return their paths.

    ``entries`` = (experiment, its results record or the exception it failed with, run-folder
    name relative to ``out_dir``). ``beside``: a folder of another reproduce run whose numbers
    are tabled beside these, experiment by experiment (:mod:`bnlab.lab.report.beside`).
    """
    out_dir = Path(out_dir)
    records = [rec if isinstance(rec, dict) else not_run_record(exp, rec) for exp, rec, _ in entries]
    others = None
    if beside is not None:
        found = load_beside(beside, [name for _, _, name in entries])
        others = [found[name] for _, _, name in entries]
    meta = run_metadata()
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    codes = sorted({str((r.get("identity") or {}).get("code")) for r in records if r.get("identity")})
    ran = sum(float(r.get("seconds") or 0) for r in records)
    header = (f"Preset `{preset}`, {stamp}; report written by bnlab {meta['bnlab']}, torch {meta['torch']}; "
              f"results computed by code {', '.join(codes) or 'unknown'}. The experiments' runs (with their "
              f"controls) took {ran / 60:.1f} min; this call {seconds / 60:.1f} min (finished results of the same "
              "run are reused). Each experiment's folder holds config.json, metrics.jsonl, "
              "results.json, series.json, its figures and control/ (the negative control).")
    if beside is not None:
        header += (f" Beside each experiment: the run found in {beside}/ (each column labelled with its "
                   "own preset, seeds and code version).")
    md = write_text(out_dir / "results.md", page_markdown(records, header=header, beside=others))
    page = render_page([(r, out_dir / name) for r, (_, _, name) in zip(records, entries)],
                       meta={"preset": preset, "total": f"{seconds / 60:.1f} min", "bnlab": meta["bnlab"]},
                       links=[f"{name}/" for _, _, name in entries], beside=others)
    html_path = write_text(out_dir / "report.html", page)
    return md, html_path


def verdict_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    return [verdict_line(r) for r in records]
