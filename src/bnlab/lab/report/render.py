"""One renderer for every experiment: ``results.json`` records → ``report.html`` and ``results.md``.

A record is what the framework writes as an experiment's ``results.json``; the page and the
Markdown are drawn from records alone, so a report can be rebuilt from saved results. Each
section shows the claim and its source, the coloured verdict, every check with its estimate,
95% interval, minimum effect and outcome, the negative control's verdict and numbers (linked),
the published numbers beside ours, figures with captions, and the deviations from the
published protocol. The verdict rule is printed at the top.

The page needs nothing but itself: figures are PNGs embedded as ``data:`` URIs (file names
confined to the run folder), the style sheet is inline, no scripts, no external links. Every
string from a record is escaped (``html.escape`` for HTML; Markdown's specials for ``.md``).
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..runs.safety import confined, escape_md
from .verdict import VERDICT_RULE, mean_ci, paired_ci

__all__ = ["ci_text", "diff_text", "render_page", "section_html", "section_markdown", "page_markdown", "png_data_uri",
           "format_check", "VERDICT_RULE", "verdict_line"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1d1d1f;line-height:1.45}
h1{margin-bottom:.2em} h2{border-top:2px solid #ddd;padding-top:.8em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;vertical-align:top} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left} td.text{text-align:left}
caption{caption-side:top;text-align:left;font-weight:600;padding:.2em 0}
.claim{background:#f6f8fa;border-left:4px solid #888;padding:.5em .9em}
.rule{background:#fbfbf4;border:1px solid #ddd;padding:.5em .9em;font-size:.92em}
.v{font-weight:700;padding:.15em .6em;border-radius:4px;display:inline-block}
.v-reproduced,.o-holds{background:#d7f5dd;color:#0b5d1e}
.v-partly{background:#fff1c7;color:#6b4e00} .v-inconclusive,.o-inconclusive{background:#ececec;color:#333}
.v-contradicted,.o-contradicted{background:#ffd9d6;color:#8a1208} .v-not-run{background:#e8e8e8;color:#444}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #ddd;display:block}
figcaption{font-size:.88em;color:#333;margin-top:.3em}
.meta{color:#555;font-size:.9em}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _slug(key: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in str(key).lower())


def png_data_uri(path: str | os.PathLike) -> str:
    """``data:image/png;base64,…`` of a PNG file (its signature is checked)."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"{path} is not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def format_check(c: Mapping[str, Any]) -> dict[str, str]:
    """The printed pieces of one check record."""
    unit = f" {c.get('unit')}" if c.get("unit") else ""
    sign = {"greater": "> +", "less": "< −", "within": "within ±", "at_most": "< +",
            "at_least": "> −"}[c["direction"]]
    return {
        "statement": str(c["statement"]),
        "compare": f"{c['treatment']} − {c['baseline']} ({c['metric']})",
        "estimate": f"{_fmt(c['estimate'])}{unit}",
        "interval": f"[{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}]",
        "rule": f"{sign}{_fmt(float(c['min_effect']))}{unit}",
        "n": str(c.get("n", "")),
        "outcome": str(c["outcome"]),
    }


def ci_text(values: Sequence[float | None], digits: int = 1) -> str:
    """``"97.3 [96.8, 97.8]"``: mean and 95% t-interval of per-seed values (``"—"`` if none)."""
    ci = mean_ci(values)
    if ci.n == 0:
        return "—"
    if ci.n < 2:
        return f"{ci.estimate:.{digits}f}"
    return f"{ci.estimate:.{digits}f} [{ci.low:.{digits}f}, {ci.high:.{digits}f}]"


def diff_text(treatment: Sequence[float | None], baseline: Sequence[float | None], digits: int = 1) -> str:
    """``"+1.2 [+0.4, +2.0]"``: the paired difference over seeds and its 95% interval."""
    d = paired_ci(treatment, baseline)
    if d.n < 2:
        return "—"
    return f"{d.estimate:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]"


def _badge(verdict: str, prefix: str = "v") -> str:
    return f'<span class="v {prefix}-{_e(_slug(verdict))}">{_e(verdict)}</span>'


def _table(t: Mapping[str, Any]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in t["header"])
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in t["rows"])
    cap = f"<caption>{_e(t['caption'])}</caption>" if t.get("caption") else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _checks_html(checks: Sequence[Mapping[str, Any]], caption: str) -> str:
    head = ("check", "difference", "estimate", "95% interval", "holds if", "seeds", "outcome")
    rows = []
    for c in checks:
        f = format_check(c)
        rows.append(f'<tr><td class="text">{_e(f["statement"])}</td><td class="text">{_e(f["compare"])}</td>'
                    f'<td>{_e(f["estimate"])}</td><td>{_e(f["interval"])}</td><td>{_e(f["rule"])}</td>'
                    f'<td>{_e(f["n"])}</td><td>{_badge(f["outcome"], "o")}</td></tr>')
    return (f"<table><caption>{_e(caption)}</caption><thead><tr>"
            + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _plain_name(name: object) -> bool:
    """A figure is a plain file name inside its run folder (what save_figure writes): no folders, no dotfiles."""
    text = str(name)
    return bool(text) and Path(text).name == text and "\\" not in text and not text.startswith(".")


def _figure_html(fig: Mapping[str, str], run_dir: Path) -> str:
    name = str(fig["file"])
    try:
        path = confined(run_dir, name) if _plain_name(name) else None
    except ValueError:
        path = None
    if path is None or not path.is_file():
        return f'<p class="meta">figure {_e(name)} is missing</p>'
    uri = png_data_uri(path)
    width = int.from_bytes(path.read_bytes()[16:20], "big") // 2  # IHDR width; 2 pixels per CSS px
    return (f'<figure><img src="{uri}" width="{width}" alt="{_e(fig.get("caption", name))}">'
            f"<figcaption>{_e(fig.get('caption', ''))}</figcaption></figure>")


def _control_html(rec: Mapping[str, Any], link: str) -> str:
    ctl = rec.get("control_summary")
    if not ctl:
        return '<p class="meta">No negative control was run with this result.</p>'
    return (f'<h3>Negative control: {_badge(ctl["verdict"])}</h3><p class="meta">The treatment arms '
            f"replaced by the baseline network on other seeds; it must not be reproduced. Numbers: "
            f'<a href="{_e(link)}">{_e(link)}</a></p>' + _checks_html(ctl["checks"], "control checks"))


def _beside_html(rec: Mapping[str, Any], beside) -> str:
    """The side-by-side table of ``rec`` and another run's record (``BesideRun``), or why there is none."""
    if beside is None:
        return ""
    if beside.record is None:
        return f'<h3>Beside: another run</h3><p class="meta">{_e(beside.reason)}</p>'
    from .beside import beside_table

    return f"<h3>Beside: the run in <code>{_e(beside.folder)}</code></h3>" + _table(beside_table(rec, beside.record))


def section_html(rec: Mapping[str, Any], run_dir: str | os.PathLike, link_prefix: str = "",
                 beside=None) -> str:
    """The ``<section>`` of one experiment; figures are read from ``run_dir``.

    ``beside``: a :class:`~bnlab.lab.report.beside.BesideRun` whose numbers are tabled next to
    this run's (or whose absence is stated), or None.
    """
    run_dir = Path(run_dir)
    kind = " (negative control)" if rec.get("control") else ""
    parts = [f'<section id="{_e(_slug(rec["experiment"]))}">',
             f"<h2>{_e(rec['title'])}{_e(kind)}</h2>",
             f'<p class="claim"><b>Claim.</b> {_e(rec["claim"])}<br><span class="meta">{_e(rec["source"])}'
             f' · experiment <code>{_e(rec["experiment"])}</code>, preset {_e(rec.get("preset"))}, seeds '
             f'{_e(", ".join(map(str, rec.get("seeds", []))))}</span></p>',
             f"<p>Verdict: {_badge(rec['verdict'])}</p>"]
    if rec.get("parts"):
        parts.append("<ul>" + "".join(f"<li>{_e(p['text'])}: {_badge(p['verdict'])}</li>"
                                      for p in rec["parts"].values()) + "</ul>")
    parts.append(_checks_html(rec["checks"],
                              "checks (paired by seed; direction and minimum effect fixed before the run)"))
    if not rec.get("control"):
        parts.append(_control_html(rec, f"{link_prefix}control/results.json"))
    parts.append(_beside_html(rec, beside))
    for label, key in (("Published numbers", "published"), ("Our numbers", "tables")):
        if rec.get(key):
            parts.append(f"<h3>{label}</h3>" + "".join(_table(t) for t in rec[key]))
    parts.extend(_figure_html(f, run_dir) for f in rec.get("figures", ()))
    if rec.get("notes"):
        parts.append("<h3>Reading the numbers</h3><ul>" + "".join(f"<li>{_e(n)}</li>" for n in rec["notes"]) + "</ul>")
    if rec.get("deviations"):
        parts.append("<h3>Deviations from the published protocol</h3><ul>"
                     + "".join(f"<li>{_e(d)}</li>" for d in rec["deviations"]) + "</ul>")
    budget = f' (quick budget {rec["budget_s"]:g} s)' if rec.get("budget_s") and rec.get("preset") == "quick" else ""
    parts.append(f'<p class="meta">{_e(rec.get("seconds", 0))} s{_e(budget)} · run folder '
                 f"<code>{_e(link_prefix or run_dir)}</code></p></section>")
    return "\n".join(parts)


def render_page(entries: Iterable[tuple[Mapping[str, Any], str | os.PathLike]], *, title: str =
                "bnlab: the claims of Batch Normalization, reproduced", meta: Mapping[str, object] | None = None,
                links: Sequence[str] | None = None, beside: Sequence[Any] | None = None) -> str:
    """The whole page for ``entries`` = (record, run folder); ``links[i]`` = folder relative to the page.

    ``beside[i]``: another run of entry i's experiment to table beside it (``BesideRun`` or None).
    """
    entries = list(entries)
    beside = list(beside) if beside is not None else [None] * len(entries)
    other = any(b is not None for b in beside)
    meta = dict(meta or {})
    meta.setdefault("generated", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    links = list(links) if links is not None else [""] * len(entries)
    rows = "".join(
        f'<tr><td class="text"><a href="#{_e(_slug(r["experiment"]))}">{_e(r["title"])}</a></td>'
        f"<td>{_e(r['experiment'])}</td><td>{_badge(r['verdict'])}</td>"
        f"<td>{_badge(r['control_summary']['verdict']) if r.get('control_summary') else '—'}</td>"
        + (f"<td>{_e(_beside_verdict_text(b))}</td>" if other else "") + "</tr>"
        for (r, _), b in zip(entries, beside))
    extra = f"<th>{_e(_beside_head(beside))}</th>" if other else ""
    summary = ("<table><caption>Summary</caption><thead><tr><th>claim</th><th>experiment</th>"
               f"<th>verdict</th><th>negative control</th>{extra}</tr></thead><tbody>{rows}</tbody></table>")
    body = "\n".join(section_html(r, d, link, b) for (r, d), link, b in zip(entries, links, beside))
    meta_html = " · ".join(f"{_e(k)}: {_e(v)}" for k, v in meta.items())
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
            f"<h1>{_e(title)}</h1><p class=\"meta\">{meta_html}</p>\n"
            f"<p class=\"rule\"><b>How verdicts are computed.</b> {_e(VERDICT_RULE)}</p>\n"
            f"{summary}\n{body}\n</body></html>\n")


def _beside_head(beside: Sequence[Any]) -> str:
    """The summary column's heading: the preset(s) of the runs beside, as their records say."""
    presets = sorted({str(b.record.get("preset")) for b in beside if b is not None and b.record is not None})
    return f"beside: verdict (control), preset {' / '.join(presets) or '—'}"


def _beside_verdict_text(b) -> str:
    """The verdict (and control's) of a ``BesideRun``, ``—`` when it has no record."""
    if b is None or b.record is None:
        return "—"
    from .beside import beside_verdict

    return beside_verdict(b.record)


def _md(text: object) -> str:
    """Text safe inside Markdown (the run folders' one escaper)."""
    return escape_md(text)


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    out.extend("| " + " | ".join(_md(c) for c in row) + " |" for row in rows)
    return out + [""]


def section_markdown(rec: Mapping[str, Any], beside=None) -> str:
    """The same section as Markdown (for ``results.md``); ``beside`` as in :func:`section_html`."""
    kind = " (negative control)" if rec.get("control") else ""
    out = [f"## {_md(rec['title'])}{kind}", "", f"**Claim.** {_md(rec['claim'])} ({_md(rec['source'])})", "",
           f"**Verdict: {_md(rec['verdict'])}** — preset {_md(rec.get('preset'))}, seeds "
           f"{_md(', '.join(map(str, rec.get('seeds', []))))}", ""]
    out += [f"- {_md(p['text'])}: {_md(p['verdict'])}" for p in rec.get("parts", {}).values()]
    fields = ("statement", "compare", "estimate", "interval", "rule", "n", "outcome")
    out += _md_table(("check", "difference", "estimate", "95% interval", "holds if", "seeds", "outcome"),
                     ([format_check(c)[k] for k in fields] for c in rec["checks"]))
    ctl = rec.get("control_summary")
    if ctl:
        out += [f"Negative control ({_md(ctl['path'])}): **{_md(ctl['verdict'])}**", ""]
    if beside is not None and beside.record is None:
        out += [f"Beside: {_md(beside.reason)}", ""]
    elif beside is not None:
        from .beside import beside_table

        t = beside_table(rec, beside.record)
        out += [f"**Beside: the run in {_md(beside.folder)}.** *{_md(t['caption'])}*", ""]
        out += _md_table(t["header"], t["rows"])
    for t in [*rec.get("published", ()), *rec.get("tables", ())]:
        out += [f"*{_md(t.get('caption', ''))}*", ""] + _md_table(t["header"], t["rows"])
    out += [f"![{_md(f['caption'])}]({_md(f['file'])})" if _plain_name(f["file"]) else
            f"(figure {_md(f['file'])} refused: not a file of the run folder)" for f in rec.get("figures", ())]
    if rec.get("notes"):
        out += ["", "Reading the numbers:", ""] + [f"- {_md(n)}" for n in rec["notes"]]
    if rec.get("deviations"):
        out += ["", "Deviations from the published protocol:", ""] + [f"- {_md(d)}" for d in rec["deviations"]]
    return "\n".join(out) + "\n"


def page_markdown(records: Iterable[Mapping[str, Any]], header: str = "", beside: Sequence[Any] | None = None) -> str:
    """``results.md`` of several experiments: the rule, a summary, one section each (``beside`` as in
    :func:`render_page`)."""
    records = list(records)
    beside = list(beside) if beside is not None else [None] * len(records)
    other = any(b is not None for b in beside)
    out = ["# bnlab reproduce: results", "", header, "", f"**How verdicts are computed.** {_md(VERDICT_RULE)}", ""]
    head = ("experiment", "verdict", "negative control", *((_beside_head(beside),) if other else ()))
    out += _md_table(head, ((r["experiment"], r["verdict"], (r.get("control_summary") or {}).get("verdict", "—"),
                             *((_beside_verdict_text(b),) if other else ())) for r, b in zip(records, beside)))
    return "\n".join(out) + "\n" + "\n".join(section_markdown(r, b) for r, b in zip(records, beside))



def verdict_line(rec: Mapping[str, Any]) -> str:
    """One terminal line: ``fig1: reproduced (3/3 checks hold); control: inconclusive``."""
    held = sum(c["outcome"] == "holds" for c in rec["checks"])
    ctl = rec.get("control_summary")
    tail = f"; negative control: {ctl['verdict']}" if ctl else ""
    return f"{rec['experiment']}: {rec['verdict']} ({held}/{len(rec['checks'])} checks hold){tail}"
