"""lr-sweep: the per-seed summary by hand, divergence counting, the tiny run."""
from __future__ import annotations

import json
import math

import pytest

from bnlab.lab.experiments import get_experiment, run_experiment
from bnlab.lab.experiments.kit import fit_metrics
from bnlab.lab.experiments.lr_sweep import PRESETS, LrSweepConfig, summarize_sweep
from bnlab.lab.config import ConfigError

pytestmark = pytest.mark.usefixtures("reference_kernels")


def test_summary_by_hand():
    lrs = (0.01, 0.1, 1.0, 10.0)
    s = summarize_sweep(lrs, val_acc=[50, 80, 85, 10], test_acc=[48, 79, 83, 10],
                        diverged=[False, False, True, True])
    # lr 1.0 has the best validation accuracy but diverged: the validation split picks 0.1
    assert s["best_test_acc"] == 79 and s["best_lr"] == pytest.approx(-1)
    assert s["max_stable_lr"] == pytest.approx(-1) and s["small_lr_acc"] == 48
    assert s["gain_from_lr"] == 31 and s["n_diverged"] == 2
    # ties on validation go to the smaller rate; everything diverged: chance, below the grid
    assert summarize_sweep(lrs, [60, 60, 1, 1], [55, 58, 1, 1], [False] * 4)["best_test_acc"] == 55
    dead = summarize_sweep(lrs, [0] * 4, [0] * 4, [True] * 4)
    assert dead["best_test_acc"] == 10.0 and dead["max_stable_lr"] == pytest.approx(-3)


def test_divergence_rule():
    diverged = {"status": "diverged", "history": [], "selected": None}
    assert fit_metrics(diverged)["diverged"] == 1.0 and fit_metrics(diverged)["test_acc"] == 10.0
    rec = {"step": 10, "train_loss": math.log(10) + 0.01, "test_acc": 0.1, "val_acc": 0.1}
    stuck = {"status": "completed", "history": [rec], "selected": rec}
    assert fit_metrics(stuck)["diverged"] == 1.0  # finished no better than chance
    ok = dict(rec, train_loss=0.5, test_acc=0.9, val_acc=0.91)
    assert fit_metrics({"status": "completed", "history": [ok], "selected": ok})["diverged"] == 0.0


def test_grid_must_ascend():
    with pytest.raises(ConfigError, match="ascending"):
        LrSweepConfig(lrs=(0.1, 0.01))
    assert len(PRESETS["quick"].lrs) >= 6 and len(PRESETS["quick"].seeds) >= 3


def test_tiny_run(tmp_path):
    exp = get_experiment("lr-sweep")
    cfg = PRESETS["tiny"]
    rec = run_experiment(exp, cfg, tmp_path, preset="tiny", with_control=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    per_lr = saved["tables"][0]
    assert [r[0] for r in per_lr["rows"]] == [f"{lr:g}" for lr in cfg.lrs]
    series = json.loads((tmp_path / "series.json").read_text())
    for arm in ("plain", "bn"):
        for s in series[arm]:
            assert s["lr"] == list(cfg.lrs) and len(s["diverged"]) == len(cfg.lrs)
    assert rec["verdict"] in {"reproduced", "contradicted", "inconclusive", "partly"}
