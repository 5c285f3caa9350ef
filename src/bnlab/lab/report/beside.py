"""A second run's numbers beside this run's: e.g. the full-scale estimates next to the quick ones.

``bnlab reproduce --beside DIR`` (:func:`bnlab.lab.reproduce.reproduce` with ``beside=DIR``)
looks for ``DIR/EXP/results.json`` of every experiment it reports — a finished run of
``bnlab reproduce --out DIR`` with any preset, or the committed ``docs/results/full/``. Where
one is found, the experiment's section gets a table with, per check, both runs' estimate,
95% interval, minimum effect and outcome side by side, plus both verdicts and controls.

Nothing is guessed: the folder is named explicitly, and each column is labelled from the
record it shows — its own ``preset``, seeds, code version and identity digest — never from
what the caller expects it to be. A record of another experiment, a negative control's own
record, or a damaged file is not shown; the section says why instead. Checks are matched by
what they compare (metric, treatment, baseline, direction), so a check present in one run
only gets "—" in the other's columns, and where the two runs word a matched check differently
(another target, another batch size) the other run's cell quotes its own statement.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..runs.runfiles import RunFileError, read_json

__all__ = ["BesideRun", "load_beside", "run_label", "beside_table", "beside_verdict", "beside_lines"]


@dataclass(frozen=True)
class BesideRun:
    """One experiment's record from the ``--beside`` folder, or why there is none (``record`` None)."""

    folder: str                      # as given, for the report (``DIR/EXP``)
    record: Mapping[str, Any] | None
    reason: str = ""


def load_beside(root: str | Path, names: Sequence[str]) -> dict[str, BesideRun]:
    """``name -> BesideRun`` for every experiment ``name`` under ``root`` (see the module doc)."""
    root = Path(root)
    out = {}
    for name in names:
        folder = f"{root}/{name}"
        path = root / name / "results.json"
        if not path.is_file():
            out[name] = BesideRun(folder, None, f"no finished run in {folder}/ (no results.json)")
            continue
        try:
            rec = read_json(path)
        except RunFileError as exc:
            out[name] = BesideRun(folder, None, f"{folder}/results.json is unreadable: {exc}")
            continue
        out[name] = BesideRun(folder, *_usable(rec, name, folder))
    return out


def _usable(rec: Any, name: str, folder: str) -> tuple[Mapping[str, Any] | None, str]:
    if not isinstance(rec, dict) or not isinstance(rec.get("checks"), list):
        return None, f"{folder}/results.json is not an experiment's results"
    if rec.get("experiment") != name:
        return None, f"{folder}/results.json is experiment {rec.get('experiment')!r}, not {name!r}"
    if rec.get("control"):
        return None, f"{folder}/results.json is a negative control's record, not the experiment's"
    if rec.get("verdict") == "not run":
        return None, f"{folder}/results.json records a run that did not finish"
    return rec, ""


def run_label(rec: Mapping[str, Any]) -> str:
    """``preset full · seeds 0, 1, 2 · code 0.1.0+3f2a… · run 9c1e…`` — what a column shows."""
    ident = rec.get("identity") if isinstance(rec.get("identity"), dict) else {}
    seeds = ", ".join(map(str, rec.get("seeds", []))) or "?"
    code = ident.get("code") or "unknown"
    digest = str(ident.get("digest") or "")[:12] or "unknown"
    when = f" · finished {rec['finished']}" if rec.get("finished") else ""
    return f"preset {rec.get('preset')} · seeds {seeds} · code {code} · run {digest}{when}"


def _key(c: Mapping[str, Any]) -> tuple:
    return (c.get("metric"), c.get("treatment"), c.get("baseline"), c.get("direction"))


def _num(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.2f}"


def _cell(c: Mapping[str, Any] | None) -> tuple[str, str]:
    """(estimate [interval] (holds if ...), outcome) of one check record, or dashes."""
    if c is None:
        return "— (no such check)", "—"
    from .render import format_check

    f = format_check(c)
    return f"{f['estimate']} {f['interval']}, n={f['n']} (holds if {f['rule']})", f["outcome"]


def beside_verdict(rec: Mapping[str, Any]) -> str:
    """``reproduced (control: inconclusive)`` of a record."""
    ctl = (rec.get("control_summary") or {}).get("verdict", "not run")
    return f"{rec.get('verdict')} (control: {ctl})"


def beside_table(here: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """The side-by-side table of two records of one experiment (``{"caption", "header", "rows"}``)."""
    a, b = f"preset {here.get('preset')}", f"preset {other.get('preset')}"
    if a == b:
        a, b = f"{a} (this run)", f"{b} (beside)"
    theirs = {_key(c): c for c in other.get("checks", [])}
    rows = [["verdict", beside_verdict(here), "", beside_verdict(other), ""]]
    seen = set()
    for c in here.get("checks", []):
        k = _key(c)
        seen.add(k)
        other_cell = list(_cell(theirs.get(k)))
        if k in theirs and theirs[k].get("statement") != c.get("statement"):   # e.g. another target accuracy
            other_cell[0] += f"; there stated as: {theirs[k].get('statement')}"
        rows.append([str(c.get("statement")), *_cell(c), *other_cell])
    for c in other.get("checks", []):
        if _key(c) not in seen:
            rows.append([str(c.get("statement")), *_cell(None), *_cell(c)])
    caption = (f"Columns '{a}': this run ({run_label(here)}). Columns '{b}': the run beside it "
               f"({run_label(other)}). Paired difference treatment − baseline, mean [95% interval] over seeds.")
    return {"caption": caption, "header": ["check", f"{a}: estimate [95% interval]", f"{a}: outcome",
                                           f"{b}: estimate [95% interval]", f"{b}: outcome"],
            "rows": rows}


def beside_lines(here: Mapping[str, Any], other: Mapping[str, Any]) -> list[str]:
    """The table of :func:`beside_table` as terminal lines: one per check, both runs side by side."""
    t = beside_table(here, other)
    a, b = t["header"][1].split(":")[0], t["header"][3].split(":")[0]
    return [f"{row[0]}: {a} {row[1]} {row[2]} | {b} {row[3]} {row[4]}" for row in t["rows"][1:]]
