"""``bnlab run`` and ``bnlab reproduce`` through the command: presets, reuse that never lies, failures.

The experiment is fig1's tiny preset, cut further (fewer steps, two seeds) so each run
takes a few seconds; what is tested is the command and the run folder, not the claim.
"""
from __future__ import annotations

import dataclasses
import importlib

import pytest

import bnlab
from bnlab.lab.cli import main
from bnlab.lab.experiments import get_experiment
from bnlab.lab.runs.runfiles import read_json


@pytest.fixture(autouse=True)
def _reference_kernels():
    previous = bnlab.get_backend()
    bnlab.set_backend("reference")
    yield
    bnlab.set_backend(previous)


@pytest.fixture()
def fig1(monkeypatch):
    """fig1 with cheap ``tiny`` and ``quick`` presets that differ in their steps."""
    exp = get_experiment("fig1")
    tiny = dataclasses.replace(exp.presets["tiny"], steps=20, eval_every=10, seeds=(0, 1),
                               train_limit=300, probe_size=50)
    presets = {**exp.presets, "tiny": tiny, "quick": dataclasses.replace(tiny, steps=30)}
    monkeypatch.setattr(type(exp), "presets", presets)
    return exp


def cli(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_unknown_presets_list_the_valid_ones(capsys, fig1):
    assert cli("run", "fig1", "--preset", "huge") == 2
    err = one_line(capsys)
    assert "huge" in err and all(p in err for p in ("tiny", "quick", "paper"))
    assert cli("reproduce", "--only", "fig1", "--preset", "huge") == 2
    err = one_line(capsys)
    assert "--preset huge" in err and "'tiny'" in err and "'quick'" in err
    assert cli("reproduce", "--only", "nope") == 2
    assert "--only" in one_line(capsys)


def test_bad_experiment_flags_are_usage_errors(tmp_path, capsys, fig1):
    for argv, fragment in ((["--dataset", "imagenet"], "--dataset imagenet: unknown dataset"),
                           (["--batch-size", "0"], "--batch-size must be >= 1"),
                           (["--out", "/etc/passwd"], "--out /etc/passwd is a file")):
        assert cli("run", "fig1", "--preset", "tiny", "--out", tmp_path / "r", *argv) == 2
        assert fragment in one_line(capsys)
    assert cli("run", "fig1", "--preset", "tiny", "--out", tmp_path / "r", "--resume") == 2
    assert "config.json does not exist" in one_line(capsys)
    assert not (tmp_path / "r").exists()


def test_run_prints_the_verdict_and_stamps_results(tmp_path, capsys, fig1):
    out = tmp_path / "r"
    assert cli("run", "fig1", "--preset", "tiny", "--out", out) == 0
    stdout = capsys.readouterr().out
    rec = read_json(out / "results.json")
    assert f"fig1: {rec['verdict']}" in stdout and "report.html" in stdout
    assert rec["identity"]["code"].startswith(bnlab.__version__ + "+")
    assert (out / "report.html").is_file() and (out / "control" / "results.json").is_file()


def test_reproduce_never_reports_another_presets_numbers(tmp_path, capsys, monkeypatch, fig1):
    """tiny finished; quick started and was killed (its config.json written); quick again:
    the tiny numbers used to be reported as quick's in results.md and report.html."""
    out = tmp_path / "rep"
    assert cli("reproduce", "--preset", "tiny", "--only", "fig1", "--out", out) == 0
    assert read_json(out / "fig1" / "results.json")["preset"] == "tiny"

    framework_run = importlib.import_module("bnlab.lab.experiments.framework.run")

    real = framework_run.train_all

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(framework_run, "train_all", killed)
    assert cli("reproduce", "--preset", "quick", "--only", "fig1", "--out", out) == 130
    assert read_json(out / "fig1" / "config.json")["preset"] == "quick"
    monkeypatch.setattr(framework_run, "train_all", real)

    capsys.readouterr()
    assert cli("reproduce", "--preset", "quick", "--only", "fig1", "--out", out) == 0
    assert "reused" not in capsys.readouterr().out
    rec = read_json(out / "fig1" / "results.json")
    assert rec["preset"] == "quick" and rec["arms"]
    assert read_json(out / "fig1" / "config.json")["config"]["steps"] == 30
    md = (out / "results.md").read_text()
    assert "preset quick" in md and "preset tiny" not in md


def test_reproduce_reuses_only_the_same_settings_and_code(tmp_path, capsys, monkeypatch, fig1):
    out = tmp_path / "rep"
    assert cli("reproduce", "--preset", "tiny", "--only", "fig1", "--out", out) == 0
    capsys.readouterr()
    assert cli("reproduce", "--preset", "tiny", "--only", "fig1", "--out", out) == 0
    assert "reused" in capsys.readouterr().out  # same settings, same code
    import bnlab.lab.runs.identity as identity

    monkeypatch.setattr(identity, "source_digest", lambda: "f" * 64)  # the code changed
    assert cli("reproduce", "--preset", "tiny", "--only", "fig1", "--out", out) == 0
    assert "reused" not in capsys.readouterr().out
    assert read_json(out / "fig1" / "results.json")["identity"]["code"].endswith("+ffffffffffff")


def test_failed_experiment_is_not_run_and_leaves_no_folder(tmp_path, capsys, monkeypatch, fig1):
    framework_run = importlib.import_module("bnlab.lab.experiments.framework.run")

    def broken(*a, **k):
        raise RuntimeError("the data went away")

    monkeypatch.setattr(framework_run, "train_all", broken)
    out = tmp_path / "rep"
    assert cli("reproduce", "--preset", "tiny", "--only", "fig1", "--out", out) == 1
    captured = capsys.readouterr()
    assert "fig1 failed: the data went away" in captured.err
    assert "fig1: not run" in captured.out
    assert not (out / "fig1").exists()  # no folder holding only config.json
    assert "not run" in (out / "results.md").read_text()


def test_a_broken_experiment_module_does_not_stop_the_others(tmp_path, capsys, monkeypatch, fig1):
    import bnlab.lab.experiments as registry

    monkeypatch.setitem(registry.REGISTRY, "broken", "no_such_module_here")
    out = tmp_path / "rep"
    assert cli("reproduce", "--preset", "tiny", "--only", "broken", "fig1", "--out", out) == 1
    captured = capsys.readouterr()
    assert "broken failed: cannot import experiment broken" in captured.err
    assert "fig1: " in captured.out and (out / "fig1" / "results.json").is_file()
    assert "not run" in (out / "results.md").read_text()


def test_jobs_2_gives_the_numbers_of_a_sequential_run(tmp_path, capsys, monkeypatch):
    """Worker processes (spawned, sharing the parent's lock on --out) compute what one process does."""
    monkeypatch.setenv("BNLAB_BACKEND", "reference")  # the workers' kernels = this process's (fixture above)
    par, seq = tmp_path / "par", tmp_path / "seq"
    assert cli("reproduce", "--preset", "tiny", "--only", "d2l-lenet", "inference", "--jobs", "2", "--out", par) == 0
    out = capsys.readouterr().out
    assert out.index("[1/2] d2l-lenet: ") < out.index("[2/2] inference: ")  # the order asked for, not finishing order
    assert cli("reproduce", "--preset", "tiny", "--only", "d2l-lenet", "--out", seq) == 0
    a, b = read_json(par / "d2l-lenet" / "results.json"), read_json(seq / "d2l-lenet" / "results.json")
    assert a["arms"].keys() == b["arms"].keys()
    for arm in a["arms"]:
        assert a["arms"][arm]["per_seed"] == b["arms"][arm]["per_seed"], arm
    assert [c["estimate"] for c in a["checks"]] == [c["estimate"] for c in b["checks"]]
    assert not list(par.rglob(".bnlab.lock"))  # every lock released
