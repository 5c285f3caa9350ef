"""Experiment ``landscape`` on its tiny preset: outputs, probe ranges, interval checks, the negative control."""
from __future__ import annotations

import json
import math

import pytest

from bnlab.lab.experiments import get_experiment, run_experiment

pytestmark = pytest.mark.usefixtures("reference_kernels")


def test_landscape_tiny_run_and_its_negative_control(tmp_path):
    exp = get_experiment("landscape")
    cfg = exp.presets["tiny"]
    res = run_experiment(exp, cfg, tmp_path, preset="tiny", with_control=True)
    for name in ("config.json", "results.json", "series.json", "metrics.jsonl", "landscape.png",
                 "control/results.json"):
        assert (tmp_path / name).exists(), name
    series = json.loads((tmp_path / "series.json").read_text())
    for runs in series.values():
        for run in runs:  # L(w) itself lies inside the recorded range
            assert all(lo <= hi for lo, hi in zip(run["loss_min"], run["loss_max"]))
    # per-seed metrics are log10 of the median probe; every check is an interval with a positive minimum effect
    for arm in res["arms"].values():
        assert all(math.isfinite(v) for v in arm["per_seed"]["log10_beta"])
    for c in res["checks"]:
        assert c["direction"] == "less" and c["min_effect"] == cfg.min_effect_log10 > 0
        assert c["n"] == len(cfg.seeds)
        assert c["ci_low"] <= c["estimate"] <= c["ci_high"]
    # the plain network in the BN arm (other seeds) must not reproduce the claim (the old checks passed it)
    control = json.loads((tmp_path / "control" / "results.json").read_text())
    assert control["control"] is True and control["verdict"] != "reproduced"
    assert res["control_summary"]["verdict"] == control["verdict"]
