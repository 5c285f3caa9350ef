"""The bnlab command: help, --version, one-line errors naming the flag, exit codes, train/compare/data/build.

Exit status contract: 0 success, 2 the command line cannot work (bad names/values, unusable
``--out``), 1 the work started and failed, 130 interrupted. Experiments' own commands
(``run``/``reproduce``) are tested in test_cli_run.py.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import types

import pytest

import bnlab
from bnlab.lab import cli as cli_module
from bnlab.lab import commands
from bnlab.lab.cli import main
from bnlab.lab.commands import default_threads
from bnlab.lab.runs.runfiles import read_json, read_jsonl

TRAIN = ["train", "--model", "mnist-mlp", "--optimizer", "adam", "--lr", "0.01", "--batch-size", "32",
         "--eval-every", "10", "--threads", "1"]


def cli(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: --help/--version (0) and usage errors (2)
        return exc.code


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv", [[], ["list"], ["train"], ["compare"], ["data"], ["data", "fetch"],
                                  ["data", "verify"], ["build"], ["reproduce"]])
def test_every_subcommand_has_help(argv, capsys):
    assert cli(*argv, "--help") == 0
    assert "usage: bnlab" in capsys.readouterr().out


def test_version(capsys):
    assert cli("--version") == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"bnlab {bnlab.__version__} ") and "torch" in out


@pytest.mark.parametrize("argv,code,fragments", [
    (["frobnicate"], 2, ["invalid choice"]),
    (["train", "--steps", "ten"], 2, ["--steps", "invalid int value"]),
    (["train", "--batch-size", "0"], 2, ["--batch-size must be >= 1, got 0"]),
    (["train", "--lr", "-1"], 2, ["--lr must be positive"]),
    (["train", "--model", "resnet9000"], 2, ["--model must be one of"]),
    (["train", "--dataset", "imagenet"], 2, ["--dataset imagenet", "choose from", "mnist-embedded"]),
    (["train", "--norm", "magic"], 2, ["--norm must be one of"]),
    (["train", "--timeout", "0"], 2, ["--timeout must be > 0"]),
    (["train", "--model", "bn-inception"], 2, ["--model bn-inception", "1×28×28", "models that do: mnist-mlp"]),
    (["train", "--out", "/proc/nope"], 2, ["--out /proc/nope", "cannot create", "writable"]),
    (["train", "--out", "/etc/passwd"], 2, ["--out /etc/passwd is a file", "choose a folder"]),
    (["compare", "/nonexistent/a", "/nonexistent/b"], 2, ["RUN_A /nonexistent/a", "no such run folder"]),
    ([], 2, ["required"]),
])
def test_errors_are_one_line_naming_the_flag(argv, code, fragments, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default --out must not land in the checkout
    assert cli(*argv) == code
    err = one_line(capsys)
    assert re.match(r"bnlab( [a-z]+)*: error: ", err), err
    for f in fragments:
        assert f in err, (f, err)
    assert not (tmp_path / "runs").exists()  # nothing left behind


def test_console_script_error_has_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "bnlab", "train", "--batch-size", "0"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "CI": "1"})
    assert p.returncode == 2 and p.stderr.strip() == "bnlab: error: --batch-size must be >= 1, got 0"


def test_train_end_to_end(tmp_path, capsys):
    out = tmp_path / "t"
    assert cli(*TRAIN, "--steps", "40", "--ckpt-every", "20", "--out", out) == 0
    res = read_json(out / "results.json")
    assert res["status"] == "completed" and res["steps"] == 40 and res["world_size"] == 1
    assert res["final_test_acc"] > 0.5 and res["identity"]["code"].startswith(bnlab.__version__)
    assert (out / "checkpoints" / "model.pt").is_file() and (out / "checkpoints" / "model.pt.sha256").is_file()
    assert "final test accuracy" in capsys.readouterr().out


def test_compare_two_runs_table_and_figure(tmp_path, capsys):
    a, b, fig = tmp_path / "a", tmp_path / "b", tmp_path / "cmp.png"
    assert cli(*TRAIN, "--steps", "20", "--out", a) == 0
    assert cli(*TRAIN, "--steps", "30", "--seed", "1", "--out", b) == 0
    capsys.readouterr()
    assert cli("compare", a, b, "--metrics", "test_acc", "train_loss", "--figure", fig) == 0
    out = capsys.readouterr().out
    last_a, last_b = read_jsonl(a / "metrics.jsonl")[-1], read_jsonl(b / "metrics.jsonl")[-1]
    row = next(line for line in out.splitlines() if line.startswith("test_acc"))
    assert f"{last_a['test_acc']:.4g} @20" in row and f"{last_b['test_acc']:.4g} @30" in row
    assert f"{last_b['test_acc'] - last_a['test_acc']:+.4g}" in row
    assert "lr " not in out  # only the metrics asked for
    import matplotlib.image as mpimg
    img = mpimg.imread(fig)
    assert img.shape[0] > 300 and img.shape[1] > 600 and img[..., :3].std() > 0.05  # drawn, not blank
    assert cli("compare", a, b, "--metrics", "nope") == 2
    assert "--metrics nope" in one_line(capsys)


def test_compare_reads_damaged_logs(tmp_path, capsys):
    for name, body in (("a", b'{"step": 10, "test_acc": 0.5}\nnull\n\xff\xfe\n{"step": 20, "test_acc": 0.7}\n'),
                       ("b", b'[]\n{"step": 10, "test_acc": 0.6}\n{"step": 20, "te')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_bytes(body)
    assert cli("compare", tmp_path / "a", tmp_path / "b", "--figure", "") == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("test_acc"))
    assert "0.7 @20" in row and "0.6 @10" in row and "-0.1" in row


def test_data_list_and_verify(tmp_path, capsys):
    assert cli("data", "list") == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("mnist-embedded", "mnist", "fashion-mnist", "cifar10"))
    assert cli("data", "verify", "cifar10", "--data-dir", tmp_path) == 1
    err = one_line(capsys)
    assert str(tmp_path) in err and "fetch" in err


def test_data_fetch_downloads_and_verifies(tmp_path, monkeypatch, capsys):
    import torch

    import bnlab.lab.data.cli as data_cli
    calls = []

    def fake_load(name, split, data_dir=None, download=False, dtype=None, base_url=None):
        calls.append((name, split, data_dir, download, base_url))
        return torch.zeros(3, 1, 28, 28, dtype=torch.uint8), torch.arange(3)

    monkeypatch.setattr(data_cli, "load_dataset", fake_load)
    assert cli("data", "fetch", "cifar10", "--data-dir", tmp_path, "--base-url", "http://127.0.0.1:9/") == 0
    assert calls == [("cifar10", s, str(tmp_path), True, "http://127.0.0.1:9/") for s in ("train", "test")]
    assert "verified" in capsys.readouterr().out


def test_build_calls_the_kernel_builder_or_says_it_is_absent(monkeypatch, capsys):
    import bnlab.kernels as kernels

    seen = []
    monkeypatch.setattr(kernels, "build", lambda verbose=False: seen.append(verbose) or "built: /cache/x.so",
                        raising=False)
    assert cli("build") == 0 and seen == [True] and "built: /cache/x.so" in capsys.readouterr().out
    def no_compiler(verbose=False):
        raise RuntimeError("bnlab: cannot build the C++ kernels: g++ not found")

    monkeypatch.setattr(kernels, "build", no_compiler)
    assert cli("build") == 1
    assert one_line(capsys) == "bnlab: error: cannot build the C++ kernels: g++ not found"
    monkeypatch.delattr(kernels, "build")
    assert cli("build") == 1
    assert "no build step" in one_line(capsys)


def test_bench_is_delegated_with_its_arguments(monkeypatch):
    seen = []
    fake = types.ModuleType("bnlab.lab.bench")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "bnlab.lab.bench", fake)
    assert cli("bench", "--preset", "quick", "--help") == 0 and seen == [["--preset", "quick", "--help"]]


@pytest.mark.parametrize("cpus,load,env,want", [
    (2, 6.1, "", 1),     # oversubscribed 2-core machine: 1, not torch's 2
    (2, 1.2, "", 1),     # one core already busy
    (2, 0.1, "", 2),
    (16, 0.0, "", 4),    # small networks: capped at 4
    (16, 13.6, "", 2),
    (1, 0.0, "", 1),
    (16, 0.0, "3", 3),   # BNLAB_THREADS overrides
])
def test_default_threads(monkeypatch, cpus, load, env, want):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setenv("BNLAB_THREADS", env)
    assert default_threads() == want


def test_train_uses_the_default_threads(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(commands, "default_threads", lambda: 1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert cli(*[a for a in TRAIN if a not in ("--threads",)][:-1], "--threads", "0", "--steps", "10",
                   "--out", tmp_path / "t") == 0
        assert read_json(tmp_path / "t" / "config.json")["meta"]["threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_tensorboard_events_when_installed(tmp_path):
    """With the `tensorboard` extra every run also writes event files TensorBoard reads."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "t"
    assert cli(*TRAIN, "--steps", "20", "--out", out) == 0
    (logdir,) = (out / "tb").iterdir()
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    want = [(r["step"], r["test_acc"]) for r in read_jsonl(out / "metrics.jsonl")]
    got = [(e.step, e.value) for e in acc.Scalars("test_acc")]
    assert [s for s, _ in got] == [s for s, _ in want]
    assert all(abs(a - b) < 1e-6 for (_, a), (_, b) in zip(got, want))


def test_a_bug_is_one_line_unless_debugging(monkeypatch, capsys):
    def bug(args):
        raise TypeError("unsupported operand")

    monkeypatch.setitem(cli_module._COMMANDS, "list", bug)
    assert cli("list") == 1
    err = one_line(capsys)
    assert "internal error: TypeError: unsupported operand" in err and "BNLAB_DEBUG=1" in err
    monkeypatch.setenv("BNLAB_DEBUG", "1")
    with pytest.raises(TypeError):
        cli("list")


def test_verdicts_are_coloured_on_a_terminal_only(monkeypatch):
    rec = {"experiment": "fig1", "verdict": "contradicted", "checks": [{"outcome": "contradicted"}]}
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert commands.show_verdict(rec).startswith("fig1: \033[1;31mcontradicted\033[0m (0/1 checks hold)")
    monkeypatch.setenv("NO_COLOR", "1")
    assert commands.show_verdict(rec) == "fig1: contradicted (0/1 checks hold)"
