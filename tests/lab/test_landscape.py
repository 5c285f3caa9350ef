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
    # the claim on a fixed seed: with BN the gradient changes less along the gradient direction
    # (more predictive) and the effective β-smoothness is lower. (The loss-range comparison
    # needs the no-BN network to have left its initial plateau: the quick preset shows it.)
    assert s["BN"]["median_grad_change_max"] < s["no-BN"]["median_grad_change_max"]
    assert s["BN"]["median_beta"] < s["no-BN"]["median_beta"]
