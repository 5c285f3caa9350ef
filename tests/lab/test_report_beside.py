"""``reproduce(..., beside=DIR)``: another run's estimates beside this run's, each column labelled by its record.

Stand-ins: a tiny run, and a copy of it relabelled as another preset and code version (the
beside table must take every label from the record it shows, never from the caller).
"""
from __future__ import annotations

import json
import shutil

import pytest

from bnlab.lab.reproduce import reproduce
from bnlab.lab.runs.safety import escape_md

from report_probe import CHROMIUM, probe
from bnlab.lab.report.beside import beside_lines, beside_table, load_beside, run_label

pytestmark = pytest.mark.usefixtures("reference_kernels")


def _check(metric, est, lo, hi, outcome, m=0.5, statement=None):
    return {"statement": statement or f"{metric} is higher", "metric": metric, "treatment": "bn",
            "baseline": "plain", "direction": "greater", "min_effect": m, "unit": "points", "estimate": est,
            "ci_low": lo, "ci_high": hi, "n": 3, "outcome": outcome}


def _rec(preset, code, checks, verdict="inconclusive", control="inconclusive"):
    return {"experiment": "fig1", "preset": preset, "control": False, "verdict": verdict, "seeds": [0, 1, 2],
            "checks": checks, "identity": {"code": code, "digest": "ab" * 32},
            "control_summary": {"verdict": control}}


def test_table_puts_both_estimates_side_by_side_labelled_from_each_record():
    quick = _rec("quick", "0.1.0+aaaaaaaaaaaa", [_check("test_acc", 0.3, -0.5, 1.1, "inconclusive"),
                                                _check("drift", 1.0, 0.2, 1.8, "holds")])
    full = _rec("full", "0.1.0+bbbbbbbbbbbb", [_check("test_acc", 2.0, 1.5, 2.5, "holds", m=1.0),
                                              _check("speed", 5.0, 4.0, 6.0, "holds")], verdict="reproduced")
    t = beside_table(quick, full)
    assert t["header"][1].startswith("preset quick") and t["header"][3].startswith("preset full")
    assert "code 0.1.0+aaaaaaaaaaaa" in t["caption"] and "code 0.1.0+bbbbbbbbbbbb" in t["caption"]
    assert t["rows"][0] == ["verdict", "inconclusive (control: inconclusive)", "",
                            "reproduced (control: inconclusive)", ""]
    by = {r[0]: r for r in t["rows"]}
    # matched by what the check compares; each side shows its own minimum effect
    acc = by["test_acc is higher"]
    assert acc[1].startswith("0.30 points [-0.50, 1.10], n=3 (holds if > +0.50 points)") and acc[2] == "inconclusive"
    assert acc[3].startswith("2.00 points [1.50, 2.50], n=3 (holds if > +1.00 points)") and acc[4] == "holds"
    assert by["drift is higher"][3:] == ["— (no such check)", "—"]         # in one run only
    assert "there stated as" not in acc[3]
    assert by["speed is higher"][1:3] == ["— (no such check)", "—"]
    lines = beside_lines(quick, full)
    assert lines[0].startswith("test_acc is higher: preset quick 0.30 points") and "| preset full 2.00" in lines[0]


def test_a_matched_check_worded_differently_quotes_the_other_runs_statement():
    quick = _rec("quick", "a", [_check("steps", -10.0, -20.0, 0.0, "inconclusive", statement="reaches 70% sooner")])
    full = _rec("full", "b", [_check("steps", -50.0, -60.0, -40.0, "holds", statement="reaches 75% sooner")])
    row = beside_table(quick, full)["rows"][1]
    assert row[0] == "reaches 70% sooner" and row[3].endswith("; there stated as: reaches 75% sooner")


def test_same_preset_columns_say_which_is_which():
    a = _rec("tiny", "x", [_check("test_acc", 0.1, 0.0, 0.2, "holds")])
    t = beside_table(a, dict(a))
    assert t["header"][1].startswith("preset tiny (this run)") and t["header"][3].startswith("preset tiny (beside)")


def test_load_beside_refuses_what_is_not_this_experiments_run(tmp_path):
    (tmp_path / "fig1").mkdir()
    (tmp_path / "fig1" / "results.json").write_text(json.dumps(_rec("full", "c", [])))
    (tmp_path / "lr").mkdir()
    (tmp_path / "lr" / "results.json").write_text(json.dumps(_rec("full", "c", [])))       # says fig1
    (tmp_path / "ics").mkdir()
    (tmp_path / "ics" / "results.json").write_text(json.dumps({**_rec("full", "c", []), "experiment": "ics",
                                                               "control": True}))
    (tmp_path / "inference").mkdir()
    (tmp_path / "inference" / "results.json").write_text("{not json")
    found = load_beside(tmp_path, ["fig1", "lr", "ics", "inference", "landscape"])
    assert found["fig1"].record is not None and found["fig1"].folder == f"{tmp_path}/fig1"
    assert "is experiment 'fig1', not 'lr'" in found["lr"].reason and found["lr"].record is None
    assert "negative control" in found["ics"].reason
    assert "unreadable" in found["inference"].reason
    assert "no finished run" in found["landscape"].reason
    assert run_label(found["fig1"].record).startswith("preset full · seeds 0, 1, 2 · code c · run abababababab")


@pytest.mark.timeout(600)
def test_reproduce_shows_the_run_beside_in_every_output(tmp_path, capsys):
    out, other = tmp_path / "quick", tmp_path / "full"
    assert reproduce(out, ["fig1"], "tiny") == 0
    # stand-in for a finished full-scale run: the same results relabelled (preset, code version)
    shutil.copytree(out, other)
    rec = json.loads((other / "fig1" / "results.json").read_text())
    rec["preset"], rec["identity"]["code"] = "full", "9.9.9+feedfacecafe"
    (other / "fig1" / "results.json").write_text(json.dumps(rec))
    capsys.readouterr()
    assert reproduce(out, ["fig1"], "tiny", beside=other) == 0               # reuses the tiny run: no training
    printed = capsys.readouterr().out
    assert f"beside ({other}/fig1): {rec['verdict']}" in printed and "code 9.9.9+feedfacecafe" in printed
    first = rec["checks"][0]["statement"]
    assert f"{first}: preset tiny" in printed and "| preset full" in printed
    md, page = (out / "results.md").read_text(), (out / "report.html").read_text()
    for text, esc in ((md, escape_md), (page, str)):
        assert esc("preset tiny: estimate [95% interval]") in text and esc("preset full: estimate [95% interval]") in text
        assert esc("code 9.9.9+feedfacecafe") in text
        assert esc("beside: verdict (control), preset full") in text
    for c in rec["checks"]:
        assert f"[{c['ci_low']:.2f}, {c['ci_high']:.2f}]" in page
    if CHROMIUM.exists():                         # the wider page still fits: no overlap, no overflow
        result = probe(page, tmp_path)
        assert " broken=0 blurry=0 overlaps=0 overflow=0 " in result, result
    # a folder without this experiment: the section says so, the report is still written
    empty = tmp_path / "empty"
    empty.mkdir()
    assert reproduce(out, ["fig1"], "tiny", beside=empty) == 0
    assert f"no finished run in {empty}/fig1/" in (out / "report.html").read_text()


def test_beside_must_be_a_folder(tmp_path):
    from bnlab.lab.config import ConfigError

    with pytest.raises(ConfigError, match="--beside"):
        reproduce(tmp_path / "o", ["fig1"], "tiny", beside=tmp_path / "nope")
