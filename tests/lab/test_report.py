"""report.html: verdict rule, escaping, self-containment, and a render in headless Chromium."""
from __future__ import annotations

import html
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bnlab.lab.report import Check, Section, Table, png_data_uri, render_html, render_markdown, verdict, write_report

CHROMIUM = Path("/usr/bin/chromium")
EVIL = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'


def _png(path: Path, color: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [1, 0, 1], color=color)
    ax.set_title("test figure")
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return path


def _sections(tmp_path: Path) -> list[Section]:
    fig_a, fig_b = _png(tmp_path / "a.png", "C0"), _png(tmp_path / "b.png", "C1")
    return [
        Section(key="lr", title="Higher learning rates", claim="BN allows 30x rates " + EVIL,
                source="Ioffe & Szegedy 2015, Sec. 4.2",
                published=(Table(("model", "steps"), (("Inception", "31.0M"),), caption="paper"),),
                ours=(Table(("variant", "acc"), ((EVIL, "0.9"),), caption="run " + EVIL),),
                figures=(fig_a, fig_b), checks=(Check("BN-x5 beats no-BN", True, "0.97 vs 0.9"),),
                deviations=("small CNN instead of Inception",), run_dir=str(tmp_path / EVIL)),
        Section(key="ics", title="ICS", claim="c", source="s", figures=(fig_a,),
                checks=(Check("a", True), Check("b", False))),
        Section(key="inference", title="Inference", claim="c", source="s", ran=False),
    ]


@pytest.mark.parametrize(
    "passed, expected",
    [((True, True), "reproduced"), ((True, False), "partly"), ((False, False), "not reproduced"), ((), "not run")],
)
def test_verdict_rule(passed, expected):
    assert verdict([Check(str(i), p) for i, p in enumerate(passed)]) == expected


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_is_self_contained_and_escaped(tmp_path):
    page = render_html(_sections(tmp_path), meta={"preset": EVIL})
    parser = _Collector()
    parser.feed(page)
    tags = [t for t, _ in parser.tags]
    assert "script" not in tags and "link" not in tags          # the evil string stayed text
    imgs = [a for t, a in parser.tags if t == "img"]
    assert len(imgs) == 3 and all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    # every figure embeds exactly the bytes of its file
    assert imgs[0]["src"] == png_data_uri(tmp_path / "a.png")
    assert not re.search(r"(src|href)=\"(https?:)?//", page)     # nothing fetched from a network
    assert html.escape(EVIL) in page
    assert page.count("<section ") == 3
    assert "Verdict: partly" in page and "Verdict: not run" in page
    md = render_markdown(_sections(tmp_path))
    assert "| Inception | 31.0M |" in md and "**Verdict: reproduced**" in md


def test_png_data_uri_rejects_non_png(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"GIF89a")
    with pytest.raises(ValueError):
        png_data_uri(bad)


_CHECK_SCRIPT = """<script>
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message)); }, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var net = performance.getEntriesByType('resource').filter(function (r) { return !/^data:/.test(r.name); });
  var d = document.createElement('pre');
  d.id = 'bnlab-check';
  d.textContent = 'images=' + imgs.length + ' broken=' + bad.length + ' fetched=' + net.length +
    ' sections=' + document.querySelectorAll('section').length + ' errors=' + window.__errors.length +
    ' title=' + document.title;
  document.body.appendChild(d);
});
</script>"""


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=10000"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    path = write_report(tmp_path / "report.html", _sections(tmp_path), meta={"preset": EVIL})
    # the page under test plus a probe script (the report itself carries no script)
    probe = tmp_path / "probe.html"
    probe.write_text(path.read_text().replace("</body>", _CHECK_SCRIPT + "</body>"))
    out = _chromium(["--dump-dom", probe.as_uri()], tmp_path / "profile")
    assert out.returncode == 0, out.stderr[-2000:]
    m = re.search(r'<pre id="bnlab-check">([^<]*)</pre>', out.stdout)
    assert m, "probe script did not run: " + out.stdout[-500:]
    title = html.unescape(m.group(1)).split(" title=", 1)[1]
    assert m.group(1).startswith("images=3 broken=0 fetched=0 sections=3 errors=0 "), m.group(1)
    assert title.startswith("bnlab:")                      # no injected script changed it
    shot = tmp_path / "shot.png"
    out = _chromium([f"--screenshot={shot}", "--window-size=1100,1400", path.as_uri()], tmp_path / "profile2")
    assert out.returncode == 0 and shot.read_bytes().startswith(b"\x89PNG"), out.stderr[-2000:]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed (apt-get install -y chromium)")
def test_chromium_probe_detects_a_broken_figure(tmp_path):
    # negative control: the same probe must report an image whose data does not decode
    page = tmp_path / "broken.html"
    page.write_text('<html><body><img src="data:image/png;base64,iVBORw0KGgoAAAA">'
                    + _CHECK_SCRIPT + "</body></html>")
    out = _chromium(["--dump-dom", page.as_uri()], tmp_path / "profile")
    assert "images=1 broken=1" in out.stdout
