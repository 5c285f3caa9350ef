"""The lab's outputs a person reads: the verdict rule, the renderer, the figure helper.

- :mod:`.verdict`: paired differences over seeds, 95% intervals, outcomes, verdicts;
- :mod:`.render`: ``results.json`` records → ``report.html`` / ``results.md``;
- :mod:`.figures`: the one figure helper (styles, interval bands, legends below, 200-dpi PNGs).

Importing this package does not import matplotlib (``figures`` does, when it draws).
"""
from .render import ci_text, diff_text, page_markdown, render_page, section_html, section_markdown, verdict_line
from .reproduce import not_run_record, write_reproduce
from .verdict import VERDICT_RULE, VERDICTS, mean_ci, outcome, paired_ci, verdict

__all__ = ["VERDICT_RULE", "VERDICTS", "mean_ci", "paired_ci", "outcome", "verdict", "render_page",
           "section_html", "section_markdown", "page_markdown", "verdict_line", "ci_text", "diff_text",
           "write_reproduce", "not_run_record"]
