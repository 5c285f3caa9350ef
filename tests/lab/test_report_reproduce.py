"""``bnlab reproduce``: one report over the experiments, verdicts on the terminal, controls linked."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from bnlab.lab import cli

from report_probe import CHROMIUM, probe

pytestmark = pytest.mark.usefixtures("reference_kernels")


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.links = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        if tag == "a":
            self.links.append(a.get("href", ""))


@pytest.mark.timeout(600)
def test_reproduce_reports_every_verdict_and_links_each_control(tmp_path, capsys):
    out = tmp_path / "rep"
    assert cli.main(["reproduce", "--only", "fig1", "--preset", "tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rec = json.loads((out / "fig1" / "results.json").read_text())
    ctl = json.loads((out / "fig1" / "control" / "results.json").read_text())
    # the terminal ends with one verdict line per experiment, the same verdicts as the files
    line = f"fig1: {rec['verdict']} ("
    assert line in printed and f"negative control: {ctl['verdict']}" in printed
    assert ctl["verdict"] != "reproduced" and rec["control_summary"]["verdict"] == ctl["verdict"]
    page = (out / "report.html").read_text()
    parsed = _Page()
    parsed.feed(page)
    assert len(parsed.imgs) == len(rec["figures"]) >= 3
    assert all(s.startswith("data:image/png;base64,") for s in parsed.imgs)
    assert "fig1/control/results.json" in parsed.links                # relative to the page: it resolves
    assert (out / parsed.links[parsed.links.index("fig1/control/results.json")]).exists()
    assert f'class="v v-{rec["verdict"]}"' in page and "How verdicts are computed" in page
    for c in rec["checks"]:                                            # every check with its numbers
        assert f"[{c['ci_low']:.2f}, {c['ci_high']:.2f}]" in page
    md = (out / "results.md").read_text()
    assert re.search(r"\| fig1 \| " + rec["verdict"] + r" \| " + ctl["verdict"] + r" \|", md)
    # the real page in headless Chromium at 2x: figures decode, crisp, nothing overlaps or overflows
    if CHROMIUM.exists():
        result = probe(page, tmp_path)
        assert result.startswith(f"images={len(rec['figures'])} broken=0 blurry=0 overlaps=0 overflow=0 "), result
