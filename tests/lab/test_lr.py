"""Experiment ``lr`` on a tiny setting: result files, and an identity of its table."""
from __future__ import annotations

import json

from bnlab.lab.experiments import get_experiment, run_experiment
from bnlab.lab.experiments.lr import PRESETS, _loop


def test_lr_variants_follow_the_paper_recipe():
    cfg = PRESETS["quick"]
    base, x5, x30 = _loop(cfg, "BN", 0), _loop(cfg, "BN-x5", 0), _loop(cfg, "BN-x30", 0)
    assert x5.lr == 5 * base.lr and x30.lr == 30 * base.lr
    assert x5.weight_decay == base.weight_decay / 5            # L2 divided by 5
    assert x5.lr_step * 6 == base.lr_step                       # exponential decay 6x faster


def test_lr_tiny_run(tmp_path):
    exp = get_experiment("lr")
    res = run_experiment(exp, exp.presets["tiny"], tmp_path, preset="tiny")
    for name in ("config.json", "results.json", "metrics.jsonl", "lr_accuracy.png"):
        assert (tmp_path / name).exists(), name
    table = json.loads((tmp_path / "results.json").read_text())["table"]
    assert set(table) == set(exp.presets["tiny"].variants)
    # identity: the baseline reaches its own best accuracy exactly at its best step
    base = res["runs"]["no-BN"][0]
    assert table["no-BN"]["steps_to_baseline_best"] == [base["best_step"]]
    assert "Verdict:" in exp.summarize(res, tmp_path)
