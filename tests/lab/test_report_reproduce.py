"""``bnlab reproduce``: report.html beside results.md, finished experiments reused, ``--force``."""
from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest

from bnlab.lab import cli


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


@pytest.mark.timeout(600)
def test_reproduce_writes_report_reuses_finished_and_force_reruns(tmp_path, monkeypatch, capsys):
    out = tmp_path / "rep"
    argv = ["reproduce", "--only", "inference", "--preset", "tiny", "--out", str(out)]
    assert cli.main(argv) == 0
    page = (out / "report.html").read_text()
    assert (out / "results.md").exists() and "Verdict:" in page
    imgs = _Imgs()
    imgs.feed(page)
    assert imgs.srcs and all(s.startswith("data:image/png;base64,") for s in imgs.srcs)
    first = json.loads((out / "inference" / "results.json").read_text())

    # a second reproduce reuses the finished results: run_experiment is not called
    from bnlab.lab import experiments as registry

    calls = []
    real = registry.run_experiment
    monkeypatch.setattr(registry, "run_experiment", lambda *a, **k: calls.append(k) or real(*a, **k))
    assert cli.main(argv) == 0
    assert calls == [] and "reused" in capsys.readouterr().out
    assert json.loads((out / "inference" / "results.json").read_text()) == first

    # an unfinished folder with the same config resumes from its checkpoints
    (out / "inference" / "results.json").unlink()
    assert cli.main(argv) == 0
    assert calls[-1]["resume"] is True
    # --force reruns from scratch
    assert cli.main(argv + ["--force"]) == 0
    assert calls[-1]["resume"] is False
    again = json.loads((out / "inference" / "results.json").read_text())
    assert again["accuracy"] == first["accuracy"]  # a CPU run repeats bit for bit
