"""The lab's report: one self-contained ``report.html`` with a section per claim.

Each section shows the claim, the published numbers, our numbers and figures, the
deviations from the published protocol, and a verdict computed from the results by one
rule for all sections (stated on the page): a section lists named checks, each a
statement about our numbers that is true or false; the verdict is **reproduced** when every
check holds, **partly** when some do, **not reproduced** when none does, and **not run**
when the experiment has no finished results.

The page needs nothing but itself: figures are PNG files embedded as ``data:`` URIs,
the style sheet is inline, there are no scripts and no external links. Every string that
comes from a config, a run name or a results file is passed through ``html.escape``.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..runs.runfiles import write_text

__all__ = [
    "Check", "Section", "Table", "VERDICT_RULE", "png_data_uri", "render_html",
    "render_markdown", "verdict", "write_report",
]

VERDICT_RULE = (
    "Each section lists checks: statements about our numbers, each true (✓) or false (✗). "
    "Verdict: reproduced = every check holds; partly = at least one holds and at least one "
    "fails; not reproduced = none holds; not run = no finished results."
)


@dataclass(frozen=True)
class Table:
    """A table of already-formatted cells (strings); escaped when rendered."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""


@dataclass(frozen=True)
class Check:
    """One statement about our numbers; ``detail`` gives the numbers it was judged on."""

    statement: str
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class Section:
    """One claim of the report."""

    key: str                      # experiment name, e.g. "lr"
    title: str
    claim: str
    source: str                   # citation of the claim
    published: tuple[Table, ...] = ()
    ours: tuple[Table, ...] = ()
    figures: tuple[Path, ...] = ()
    checks: tuple[Check, ...] = ()
    deviations: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    run_dir: str = ""
    ran: bool = True

    @property
    def verdict(self) -> str:
        return verdict(self.checks) if self.ran else "not run"


def verdict(checks: Sequence[Check]) -> str:
    """The rule of :data:`VERDICT_RULE` applied to ``checks``."""
    if not checks:
        return "not run"
    held = sum(c.passed for c in checks)
    if held == len(checks):
        return "reproduced"
    return "partly" if held else "not reproduced"


def png_data_uri(path: str | os.PathLike) -> str:
    """``data:image/png;base64,…`` of a PNG file (its signature is checked)."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"{path} is not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1d1d1f;line-height:1.45}
h1{margin-bottom:.2em} h2{border-top:2px solid #ddd;padding-top:.8em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
caption{caption-side:top;text-align:left;font-weight:600;padding:.2em 0}
.claim{background:#f6f8fa;border-left:4px solid #888;padding:.5em .9em}
.verdict{font-weight:700;padding:.35em .8em;border-radius:4px;display:inline-block}
.v-reproduced{background:#d7f5dd;color:#0b5d1e} .v-partly{background:#fff1c7;color:#6b4e00}
.v-not-reproduced{background:#ffd9d6;color:#8a1208} .v-not-run{background:#e8e8e8;color:#444}
figure{margin:.8em 0} figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}
.ok{color:#0b5d1e} .fail{color:#8a1208} .meta{color:#555;font-size:.9em}
nav ul{columns:2}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _table(t: Table) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    cap = f"<caption>{_e(t.caption)}</caption>" if t.caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _slug(key: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in key.lower())


def _section_html(s: Section) -> str:
    v = s.verdict
    parts = [
        f'<section id="{_e(_slug(s.key))}">',
        f"<h2>{_e(s.title)}</h2>",
        f'<p class="claim"><b>Claim.</b> {_e(s.claim)}<br><span class="meta">{_e(s.source)}</span></p>',
        f'<p><span class="verdict v-{_e(_slug(v))}">Verdict: {_e(v)}</span></p>',
    ]
    if s.checks:
        items = "".join(
            f'<li class="{"ok" if c.passed else "fail"}">{"✓" if c.passed else "✗"} {_e(c.statement)}'
            + (f' <span class="meta">({_e(c.detail)})</span>' if c.detail else "") + "</li>"
            for c in s.checks
        )
        parts.append(f"<h3>Checks</h3><ul>{items}</ul>")
    if s.published:
        parts.append("<h3>Published numbers</h3>" + "".join(_table(t) for t in s.published))
    if s.ours:
        parts.append("<h3>Our numbers</h3>" + "".join(_table(t) for t in s.ours))
    for fig in s.figures:
        parts.append(
            f'<figure><img src="{png_data_uri(fig)}" alt="{_e(Path(fig).stem)}">'
            f"<figcaption>{_e(Path(fig).name)}</figcaption></figure>"
        )
    if s.deviations:
        parts.append("<h3>Deviations from the published protocol</h3><ul>"
                     + "".join(f"<li>{_e(d)}</li>" for d in s.deviations) + "</ul>")
    if s.notes:
        parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{_e(n)}</li>" for n in s.notes) + "</ul>")
    if s.run_dir:
        parts.append(f'<p class="meta">Run folder: <code>{_e(s.run_dir)}</code></p>')
    parts.append("</section>")
    return "\n".join(parts)


def render_html(sections: Iterable[Section], title: str = "bnlab: the claims of Batch Normalization, reproduced",
                meta: Mapping[str, object] | None = None) -> str:
    """The whole page as a string."""
    sections = list(sections)
    meta = dict(meta or {})
    meta.setdefault("generated", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    summary = Table(
        header=("claim", "experiment", "verdict"),
        rows=tuple((s.title, s.key, s.verdict) for s in sections),
        caption="Summary",
    )
    toc = "".join(f'<li><a href="#{_e(_slug(s.key))}">{_e(s.title)}</a></li>' for s in sections)
    meta_html = " · ".join(f"{_e(k)}: {_e(v)}" for k, v in meta.items())
    body = "\n".join(_section_html(s) for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{_e(title)}</h1><p class=\"meta\">{meta_html}</p>\n"
        f"<p><b>How verdicts are computed.</b> {_e(VERDICT_RULE)}</p>\n"
        f"{_table(summary)}<nav><ul>{toc}</ul></nav>\n{body}\n</body></html>\n"
    )


def render_markdown(sections: Iterable[Section]) -> str:
    """The same numbers as text, for ``results.md``."""
    out = []
    for s in sections:
        out.append(f"## {s.title}\n\n**Claim.** {s.claim} ({s.source})\n\n**Verdict: {s.verdict}**\n")
        out.extend(f"- {'✓' if c.passed else '✗'} {c.statement}" + (f" ({c.detail})" if c.detail else "")
                   for c in s.checks)
        for label, tables in (("Published", s.published), ("Ours", s.ours)):
            for t in tables:
                out.append(f"\n{label}{': ' + t.caption if t.caption else ''}\n")
                out.append("| " + " | ".join(t.header) + " |")
                out.append("|" + "---|" * len(t.header))
                out.extend("| " + " | ".join(row) + " |" for row in t.rows)
        if s.deviations:
            out.append("\nDeviations from the published protocol:\n")
            out.extend(f"- {d}" for d in s.deviations)
        out.append("")
    return "\n".join(out) + "\n"


def write_report(path: str | os.PathLike, sections: Iterable[Section], **kwargs) -> Path:
    """Render and write ``report.html`` atomically; returns its path."""
    return write_text(path, render_html(sections, **kwargs))


# ---------------------------------------------------------------- assembling the page of a run


def experiment_section(exp, outcome, run_dir: str | os.PathLike) -> Section:
    """The section of one experiment of ``bnlab reproduce``.

    ``outcome`` is its results dict, or the exception it failed with. Experiments whose
    module defines ``report_section(results, run_dir)`` build their own; ``fig1`` is
    judged here; any other gets its figures and a "not run" verdict (no checks).
    """
    import sys

    run_dir = Path(run_dir)
    if isinstance(outcome, BaseException):
        return Section(key=exp.name, title=exp.name, claim=exp.claim, source="", ran=False,
                       notes=(f"failed: {type(outcome).__name__}: {outcome}",), run_dir=str(run_dir))
    builder = getattr(sys.modules.get(exp.run.__module__), "report_section", None)
    if builder is not None:
        return builder(outcome, run_dir)
    if exp.name == "fig1":
        return _fig1_section(exp, outcome, run_dir)
    return Section(key=exp.name, title=exp.name, claim=exp.claim, source="",
                   figures=tuple(p for p in (run_dir / f for f in exp.figures) if p.exists()),
                   ran=False, notes=("this experiment defines no checks",), run_dir=str(run_dir))


def _fig1_section(exp, results: Mapping, run_dir: Path) -> Section:
    nets = results["networks"]
    bn, plain = nets.get("bn", {}), nets.get("plain", nets.get("no_bn", {}))
    targets = list(bn.get("steps_to_reach", {}))
    rows = tuple(
        (tag, str(r.get("status")), _pct(r.get("best_test_acc")),
         *("never" if r["steps_to_reach"].get(t) is None else str(r["steps_to_reach"][t]) for t in targets))
        for tag, r in nets.items())
    checks = [Check("the BN network reaches ≥ 90% test accuracy", (bn.get("best_test_acc") or 0) >= 0.90,
                    _pct(bn.get("best_test_acc")))]
    if plain:
        reached = [t for t in targets if plain["steps_to_reach"].get(t) is not None]
        faster = all(bn["steps_to_reach"].get(t) is not None and bn["steps_to_reach"][t] <= plain["steps_to_reach"][t]
                     for t in reached)
        checks.append(Check("BN reaches every accuracy level the plain network reaches, no later", faster,
                            ", ".join(f"{t}: {bn['steps_to_reach'].get(t)} vs {plain['steps_to_reach'][t]}"
                                      for t in reached) or "plain network reached no level"))
        checks.append(Check("BN's best test accuracy is higher", (bn.get("best_test_acc") or 0)
                            > (plain.get("best_test_acc") or 0),
                            f"{_pct(bn.get('best_test_acc'))} vs {_pct(plain.get('best_test_acc'))}"))
    return Section(
        key="fig1", title="Faster training and stable activations (Figure 1)", claim=exp.claim,
        source="Ioffe & Szegedy (2015), Section 4.1, Figure 1",
        published=(Table(("quantity", "paper (MNIST, 50k steps, batch 60)"),
                         (("test accuracy", "BN higher and reached sooner (Fig. 1a, curves)"),
                          ("sigmoid input percentiles", "stable with BN, drifting without (Fig. 1b, c)"))),),
        ours=(Table(("network", "status", "best test acc", *(f"steps to {float(t) * 100:g}%" for t in targets)),
                    rows),),
        figures=tuple(p for p in (run_dir / f for f in results.get("figures", exp.figures)) if p.exists()),
        checks=tuple(checks), run_dir=str(run_dir),
        deviations=("quick preset: the 5,000 embedded MNIST digits and fewer steps than the paper's 50k.",),
    )


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def write_reproduce_report(out_dir: str | os.PathLike, entries, preset: str) -> Path:
    """``report.html`` for ``bnlab reproduce``: ``entries`` = (experiment, outcome, run-folder name)."""
    out_dir = Path(out_dir)
    sections = [experiment_section(exp, outcome, out_dir / rel) for exp, outcome, rel in entries]
    return write_report(out_dir / "report.html", sections, meta={"preset": preset})
