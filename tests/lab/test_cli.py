"""The bnlab command: help everywhere, one-line errors, list/run/reproduce/train end to end."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import bnlab
from bnlab.lab.cli import main
from bnlab.lab.config import ConfigError, apply_overrides, config_from_dict, config_to_dict
from bnlab.lab.experiments import experiments
from bnlab.lab.experiments.fig1 import PRESETS, Fig1Config
from bnlab.lab.runs.runfiles import read_json


@pytest.fixture(autouse=True)
def _reference_kernels():
    previous = bnlab.get_backend()
    bnlab.set_backend("reference")
    yield
    bnlab.set_backend(previous)


def cli(*argv) -> int:
    try:
        return main(list(argv))
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        return exc.code


@pytest.mark.parametrize("argv", [[], ["list"], ["run"], ["run", "fig1"], ["reproduce"], ["train"]])
def test_every_subcommand_has_help(argv, capsys):
    assert cli(*argv, "--help") == 0
    assert "usage: bnlab" in capsys.readouterr().out


@pytest.mark.parametrize("argv,fragment", [
    (["frobnicate"], "invalid choice"),
    (["run", "no-such-exp"], "invalid choice"),
    (["run", "fig1", "--preset", "huge"], "invalid choice"),
    (["run", "fig1", "--steps", "ten"], "invalid int value"),
    (["run", "fig1", "--lr", "-1"], "lr must be positive"),
    (["run", "fig1", "--neuron", "500"], "neuron must be in 0..99"),
    (["run", "fig1", "--no-such-flag"], "unrecognized arguments"),
    (["train", "--model", "resnet9000"], "model must be one of"),
    (["train", "--norm", "magic"], "norm must be one of"),
    (["train", "--optimizer", "lbfgs"], "optimizer must be one of"),
    (["reproduce", "--only", "nope"], "unknown experiment"),
    ([], "required"),
])
def test_bad_arguments_give_one_line_and_nonzero_exit(argv, fragment, capsys):
    code = cli(*argv)
    err = capsys.readouterr().err
    assert code != 0
    assert fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_console_script_error_has_no_traceback():
    env = {**os.environ, "CI": "1"}
    p = subprocess.run([sys.executable, "-m", "bnlab", "run", "fig1", "--batch-size", "0"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2 and p.stderr.strip() == "bnlab: error: batch_size must be >= 1, got 0"


def test_list_shows_experiments_and_presets(capsys):
    assert cli("list") == 0
    out = capsys.readouterr().out
    for name, exp in experiments().items():
        assert name in out
        for preset in exp.presets:
            assert f"--preset {preset}" in out
    assert "fig1" in experiments() and {"quick", "paper"} <= set(experiments()["fig1"].presets)


def test_config_flags_roundtrip():
    cfg = apply_overrides(PRESETS["quick"], {"steps": 5, "targets": (0.5,)})
    assert cfg.steps == 5 and cfg.lr == PRESETS["quick"].lr
    assert config_from_dict(Fig1Config, config_to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown config field"):
        apply_overrides(cfg, {"stepz": 5})


def test_run_with_overrides_writes_resolved_config(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli("run", "fig1", "--preset", "tiny", "--steps", "60", "--eval-every", "30",
               "--probe-size", "50", "--out", str(out)) == 0
    cfg = read_json(out / "config.json")
    assert cfg["config"]["steps"] == 60 and cfg["config"]["probe_size"] == 50 and cfg["preset"] == "tiny"
    assert read_json(out / "results.json")["networks"]["bn"]["steps"] == 60
    assert "with BN" in capsys.readouterr().out


def test_reproduce_writes_results_md(tmp_path, capsys):
    out = tmp_path / "rep"
    assert cli("reproduce", "--preset", "tiny", "--only", "fig1", "--out", str(out)) == 0
    md = (out / "results.md").read_text()
    assert "## fig1" in md and "Claim" in md
    for link in ("fig1/fig1_a_test_accuracy.png", "fig1/fig1_bc_sigmoid_input.png"):
        assert f"]({link})" in md and (out / link).is_file()
    assert "results.md" in capsys.readouterr().out


def test_train_command(tmp_path, capsys):
    out = tmp_path / "t"
    assert cli("train", "--model", "mnist-mlp", "--norm", "batch", "--optimizer", "adam", "--lr", "0.01",
               "--steps", "40", "--eval-every", "20", "--ckpt-every", "20", "--threads", "1",
               "--out", str(out)) == 0
    res = read_json(out / "results.json")
    assert res["status"] == "completed" and res["steps"] == 40 and res["world_size"] == 1
    assert res["final_test_acc"] > 0.5
    assert (out / "checkpoints" / "model.pt").is_file()
    assert "final test accuracy" in capsys.readouterr().out
