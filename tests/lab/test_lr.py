"""Experiment ``lr``: the paper's x5/x30 recipe with a decay that keeps BN-x5's lr meaningful; a tiny run."""
from __future__ import annotations

import json

import pytest

from bnlab.lab.engine.optim import learning_rate
from bnlab.lab.experiments import get_experiment, run_experiment
from bnlab.lab.experiments.lr import PRESETS, loop_config

pytestmark = pytest.mark.usefixtures("reference_kernels")


@pytest.mark.parametrize("preset", ["quick", "full", "paper"])
def test_lr_variants_follow_the_paper_recipe(preset):
    cfg = PRESETS[preset]
    base, x5, x30 = loop_config(cfg, "bn", 0), loop_config(cfg, "bn_x5", 0), loop_config(cfg, "bn_x30", 0)
    assert x5.lr == 5 * base.lr and x30.lr == 30 * base.lr
    assert x5.weight_decay == base.weight_decay / 5            # L2 divided by 5
    assert x5.lr_step * 6 == base.lr_step                       # exponential decay 6x faster


@pytest.mark.parametrize("preset", ["quick", "full", "paper"])
def test_bn_x5_lr_stays_meaningful_over_the_run(preset):
    # the old schedule (a period of 450 steps ÷ 6 over 600 steps) left BN-x5 at 5·2⁻⁸ η₀ ≈ 0.02 η₀ at the end
    cfg = PRESETS[preset]
    base, x5 = loop_config(cfg, "bn", 0), loop_config(cfg, "bn_x5", 0)
    end = learning_rate(x5.lr, x5.schedule, x5.steps - 1, x5.lr_step, x5.lr_gamma)
    assert end >= 2 * base.lr                                     # 2.5 η₀ with the default decay
    assert learning_rate(base.lr, base.schedule, base.steps - 1, base.lr_step, base.lr_gamma) > 0.85 * base.lr


def test_lr_tiny_run(tmp_path):
    exp = get_experiment("lr")
    cfg = exp.presets["tiny"]
    res = run_experiment(exp, cfg, tmp_path, preset="tiny", with_control=False)
    for name in ("config.json", "results.json", "metrics.jsonl", "lr_accuracy.png"):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["arms"]) == {a.name for a in exp.arms(cfg)}
    for arm in saved["arms"].values():
        for steps, acc in zip(arm["per_seed"]["steps_to_target"], arm["per_seed"]["test_acc"]):
            assert steps % cfg.eval_every == 0 and 0 < steps <= cfg.steps + cfg.eval_every
            assert 0 <= acc <= 100                                 # percent
    # the speed checks compare steps, the others accuracy in points; every check is pre-registered
    registered = json.loads((tmp_path / "config.json").read_text())["checks"]
    assert [c["statement"] for c in registered] == [c["statement"] for c in res["checks"]]
    assert {c["unit"] for c in res["checks"]} == {"steps", "points"}
