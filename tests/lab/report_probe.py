"""Headless Chromium helpers for the report tests: render a page at 2x and measure it.

``probe(html, tmp_path)`` loads the page with a measuring script appended and returns one line:
``images=N broken=N blurry=N overlaps=N overflow=0|1 title=...`` — images that do not decode,
images with fewer than 2 pixels per CSS pixel, overlapping blocks inside a ``<section>``, and a
page wider than the window.
"""
from __future__ import annotations

import html
import re
import subprocess
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")

PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  var blurry = imgs.filter(function (i) { return i.naturalWidth > 0 && i.naturalWidth < 2 * i.clientWidth - 1; }).length;
  var overlaps = 0;
  document.querySelectorAll('section').forEach(function (s) {
    var r = Array.prototype.map.call(s.children, function (c) { return c.getBoundingClientRect(); });
    for (var a = 0; a < r.length; a++) for (var b = a + 1; b < r.length; b++)
      if (r[a].height > 0 && r[b].height > 0 && r[a].top < r[b].bottom - 0.5 && r[b].top < r[a].bottom - 0.5 &&
          r[a].left < r[b].right && r[b].left < r[a].right) overlaps++;
  });
  var wide = document.documentElement.scrollWidth > window.innerWidth ? 1 : 0;
  var d = document.createElement('pre');
  d.id = 'bnlab-check';
  d.textContent = 'images=' + imgs.length + ' broken=' + broken + ' blurry=' + blurry + ' overlaps=' + overlaps +
    ' overflow=' + wide + ' title=' + document.title;
  document.body.appendChild(d);
});
</script>"""


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--force-device-scale-factor=2", f"--user-data-dir={profile}", "--virtual-time-budget=10000"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120)


def probe(page_html: str, tmp_path: Path) -> str:
    probe = tmp_path / "probe.html"
    probe.write_text(page_html.replace("</body>", PROBE + "</body>"))
    out = chromium(["--window-size=1100,1400", "--dump-dom", probe.as_uri()], tmp_path / "profile")
    assert out.returncode == 0, out.stderr[-2000:]
    m = re.search(r'<pre id="bnlab-check">([^<]*)</pre>', out.stdout)
    assert m, "probe script did not run: " + out.stdout[-500:]
    return html.unescape(m.group(1))
