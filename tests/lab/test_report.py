"""report.html / results.md from results records; the figure helper's rules; headless Chromium."""
from __future__ import annotations

import html
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bnlab.lab.report.figures import DPI, layout_problems, legend_below, mean_band, new_figure, save_figure
from bnlab.lab.report.render import page_markdown, png_data_uri, render_page, section_markdown, verdict_line
from bnlab.lab.report.verdict import VERDICT_RULE

from report_probe import CHROMIUM, chromium, probe

EVIL = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>|*_'


def _figure(out: Path, name: str) -> dict:
    fig, axes = new_figure(width=6.0, height=3.6)
    ax = axes[0][0]
    for i, label in enumerate(["without BN", "with BN", "noisy BN"]):
        mean_band(ax, [0, 1, 2, 3], [[i, i + 1, i + 2, i + 2], [i + .2, i + .9, i + 2.1, i + 2.2]], label, i)
    ax.set(xlabel="training step", ylabel="test accuracy (%)", title="claim title")
    legend_below(fig, note="band: 95% interval over 2 seeds")
    return save_figure(fig, out, name, f"caption of {name}: the blue curve lies lowest")


def _check(outcome: str, statement: str = "BN's test accuracy is higher") -> dict:
    return {"statement": statement, "metric": "test_acc", "treatment": "bn", "baseline": "plain",
            "direction": "greater", "min_effect": 0.5, "unit": "points", "part": "", "estimate": 1.2,
            "ci_low": 0.7, "ci_high": 1.7, "n": 3, "outcome": outcome}


def _record(out: Path, name: str, verdict: str, outcomes: list[str], control: str | None = "inconclusive") -> dict:
    rec = {"experiment": name, "title": f"{name} title " + EVIL, "claim": "BN helps " + EVIL,
           "source": "Ioffe & Szegedy (2015)", "preset": "tiny", "control": False, "verdict": verdict,
           "checks": [_check(o, f"check {i} " + EVIL) for i, o in enumerate(outcomes)], "parts": {},
           "seeds": [0, 1, 2], "arms": {}, "figures": [_figure(out, f"{name}_a.png"), _figure(out, f"{name}_b.png")],
           "tables": [{"caption": "ours " + EVIL, "header": ["network", "acc %"], "rows": [[EVIL, "97.1"]]}],
           "published": [{"caption": "paper", "header": ["model", "steps"], "rows": [["Inception", "31.0M"]]}],
           "deviations": ["small CNN " + EVIL], "seconds": 1.5}
    if control:
        rec["control_summary"] = {"verdict": control, "path": "control/results.json",
                                  "checks": [_check("inconclusive")]}
    return rec


@pytest.fixture
def records(tmp_path):
    return [(_record(tmp_path, "fig1", "reproduced", ["holds", "holds"]), tmp_path),
            (_record(tmp_path, "ics", "contradicted", ["holds", "contradicted"]), tmp_path),
            (_record(tmp_path, "lr", "inconclusive", ["inconclusive"], control=None), tmp_path)]


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_page_is_self_contained_escaped_and_states_the_rule(records, tmp_path):
    page = render_page(records, meta={"preset": EVIL})
    parser = _Collector()
    parser.feed(page)
    tags = [t for t, _ in parser.tags]
    assert "script" not in tags and "link" not in tags              # the evil strings stayed text
    imgs = [a for t, a in parser.tags if t == "img"]
    assert len(imgs) == 6 and all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    assert imgs[0]["src"] == png_data_uri(tmp_path / "fig1_a.png")
    assert not re.search(r"(src|href)=\"(https?:)?//", page)         # nothing fetched from a network
    assert html.escape(EVIL) in page and html.escape(VERDICT_RULE) in page
    assert page.count("<section ") == 3
    for v in ("reproduced", "contradicted", "inconclusive"):
        assert f'class="v v-{v}"' in page                             # coloured verdict badges
    assert 'class="v o-holds"' in page and 'class="v o-contradicted"' in page
    assert '<a href="control/results.json">' in page                 # the control's numbers are linked
    assert "No negative control was run" in page                      # and its absence is said
    assert "[0.70, 1.70]" in page and "&gt; +0.50 points" in page      # interval and minimum effect


def test_figures_are_confined_to_the_run_folder(records, tmp_path):
    rec = dict(records[0][0], figures=[{"file": "../../etc/passwd", "caption": "x"}])
    page = render_page([(rec, tmp_path)])
    assert "data:image" not in page and "is missing" in page


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "sub/x.png", ".hidden.png", "..\\x.png"])
def test_markdown_refuses_figure_paths_outside_the_run_folder(records, bad):
    md = section_markdown(dict(records[0][0], figures=[{"file": bad, "caption": "x"}]))
    assert "![" not in md and "refused" in md


def test_markdown_is_escaped_and_has_the_numbers(records):
    md = page_markdown([r for r, _ in records])
    assert "<script>" not in md and "\\<script\\>" in md            # literal text, not raw HTML
    assert "| Inception | 31\\.0M |" in md or "| Inception | 31.0M |" in md
    assert "\\|\\*\\_" in md                                           # table/emphasis specials escaped
    assert "**Verdict: reproduced**" in section_markdown(records[0][0])


def test_verdict_line():
    rec = {"experiment": "fig1", "verdict": "partly", "checks": [_check("holds"), _check("inconclusive")],
           "control_summary": {"verdict": "inconclusive"}}
    assert verdict_line(rec) == "fig1: partly (1/2 checks hold); negative control: inconclusive"


def test_png_data_uri_rejects_non_png(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"GIF89a")
    with pytest.raises(ValueError):
        png_data_uri(bad)


# ------------------------------------------------------------------ the figure helper's rules


def test_saved_figures_are_200_dpi(tmp_path):
    from PIL import Image

    rec = _figure(tmp_path, "f.png")
    img = Image.open(tmp_path / rec["file"])
    assert img.info["dpi"][0] == pytest.approx(DPI, abs=1)
    assert img.size[0] >= 5 * DPI                                      # a 6-inch figure at 200 dpi


def test_a_legend_over_the_data_is_refused(tmp_path):
    fig, axes = new_figure()
    axes[0][0].plot([0, 1], [0, 1], label="a")
    axes[0][0].legend(loc="center")                                    # inside the axes
    assert any("overlaps" in p for p in layout_problems(fig))
    with pytest.raises(ValueError, match="overlaps"):
        save_figure(fig, tmp_path, "bad.png", "caption")
    assert not (tmp_path / "bad.png").exists()


def test_a_curve_missing_from_the_legend_and_an_empty_caption_are_refused(tmp_path):
    fig, axes = new_figure()
    axes[0][0].plot([0, 1], [0, 1], label="in legend")
    line = axes[0][0].plot([0, 1], [1, 0], label="later")[0]
    legend_below(fig)
    line.set_label("renamed after the legend was drawn")
    assert any("not in the legend" in p for p in layout_problems(fig))
    fig2, axes2 = new_figure()
    axes2[0][0].plot([0, 1], [0, 1], label="a")
    legend_below(fig2)
    with pytest.raises(ValueError, match="caption"):
        save_figure(fig2, tmp_path, "c.png", "  ")
    with pytest.raises(ValueError, match="plain"):
        save_figure(new_figure()[0], tmp_path, "../c.png", "caption")


# ------------------------------------------------------------------ headless Chromium


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed (apt-get install -y chromium)")
def test_report_in_headless_chromium(records, tmp_path):
    from PIL import Image

    page = tmp_path / "report.html"
    page.write_text(render_page(records, meta={"preset": EVIL}))
    result = probe(page.read_text(), tmp_path)
    assert result.startswith("images=6 broken=0 blurry=0 overlaps=0 overflow=0 title=bnlab:"), result
    shot = tmp_path / "shot.png"
    out = chromium([f"--screenshot={shot}", "--window-size=1100,1400", page.as_uri()], tmp_path / "profile2")
    assert out.returncode == 0, out.stderr[-2000:]
    img = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    assert img.size == (2200, 2800)                                    # rendered at 2x
    colours = {c for _, c in img.getcolors(maxcolors=1 << 24)}
    assert len(colours) > 50                                           # not a blank page
    assert (0xd7, 0xf5, 0xdd) in colours and (0xff, 0xd9, 0xd6) in colours  # green and red verdicts drawn


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed (apt-get install -y chromium)")
def test_chromium_probe_detects_broken_blurry_and_overlapping(tmp_path):
    # negative control of the probe: a broken image, a stretched one, two overlapping blocks
    tiny = png_data_uri(Path(_figure(tmp_path, "t.png")["file"]).name and tmp_path / "t.png")
    page = ('<html><head><title>bnlab: x</title></head><body><section><img src="data:image/png;base64,iVBORw0KGgoAAAA">'
            f'<img src="{tiny}" style="width:4000px">'
            '<div style="height:50px">a</div><div style="height:50px;margin-top:-30px">b</div></section></body></html>')
    result = probe(page, tmp_path)
    assert "broken=1" in result and "blurry=1" in result and "overflow=1" in result
    assert "overlaps=0" not in result
