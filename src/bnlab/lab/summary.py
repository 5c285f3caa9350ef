"""``results.md``: the key numbers and figures of a ``bnlab reproduce`` run, one section each."""
from __future__ import annotations

import datetime
import html
from pathlib import Path
from typing import Any, Sequence

from .runs.runfiles import run_metadata, write_text

__all__ = ["results_markdown", "write_results_md"]


def results_markdown(entries: Sequence[tuple[Any, Any, str]], preset: str, seconds: float) -> str:
    """Markdown for ``entries`` = (experiment, results dict or exception, run dir relative to the file)."""
    meta = run_metadata()
    lines = [
        "# bnlab reproduce: results",
        "",
        f"Preset `{preset}`, {datetime.datetime.now().isoformat(timespec='seconds')}, "
        f"bnlab {meta['bnlab']}, torch {meta['torch']}, {meta['threads']} threads, "
        f"{seconds / 60:.1f} min in all. Each experiment's folder holds `config.json`, "
        "`metrics.jsonl`, `results.json` and its figures.",
        "",
    ]
    for exp, outcome, rel in entries:
        lines += [f"## {exp.name}", "", f"**Claim.** {exp.claim}", ""]
        if isinstance(outcome, BaseException):
            msg = html.escape(f"{type(outcome).__name__}: {outcome}")
            lines += [f"**Failed:** {msg}", ""]
            continue
        lines += [f"Run folder: [`{rel}/`]({rel}/) — {outcome.get('seconds', 0):.0f} s.", ""]
        lines += [exp.summarize(outcome, Path(rel)), ""]
    return "\n".join(lines)


def write_results_md(out_dir: str | Path, entries, preset: str, seconds: float) -> Path:
    return write_text(Path(out_dir) / "results.md", results_markdown(entries, preset, seconds))
