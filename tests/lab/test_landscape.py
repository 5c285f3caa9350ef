"""Experiment ``landscape`` on a tiny setting: files, and BN's narrower loss range."""
from __future__ import annotations

from bnlab.lab.experiments import get_experiment, run_experiment


def test_landscape_tiny_run(tmp_path):
    exp = get_experiment("landscape")
    res = run_experiment(exp, exp.presets["tiny"], tmp_path, preset="tiny")
    for name in ("config.json", "results.json", "metrics.jsonl", "landscape.png"):
        assert (tmp_path / name).exists(), name
    for runs in res["runs"].values():
        for rec in runs[0]["history"]:  # L(w) itself lies inside the recorded range
            assert rec["probe_loss_min"] <= rec["probe_loss_max"]
    s = res["summary"]
    # the claim on a fixed seed: with BN the loss varies less along the gradient
    assert s["BN"]["median_loss_range"] < s["no-BN"]["median_loss_range"]
