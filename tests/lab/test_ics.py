"""Experiment ``ics`` on a tiny setting: files, the first-layer identity, noisy BN's shift."""
from __future__ import annotations

from bnlab.lab.experiments import get_experiment, run_experiment


def test_ics_tiny_run(tmp_path):
    exp = get_experiment("ics")
    res = run_experiment(exp, exp.presets["tiny"], tmp_path, preset="tiny")
    for name in ("config.json", "results.json", "metrics.jsonl", "ics_accuracy.png", "ics_layers.png"):
        assert (tmp_path / name).exists(), name
    assert set(res["runs"]) == {"no-BN", "BN", "noisy BN"}
    for net in ("no-BN", "BN"):  # (noisy BN's G' sees the next step's noise, so not there)
        for rec in res["runs"][net][0]["history"]:
            first = rec["ics"][0]  # nothing precedes layer 1: G' = G exactly
            assert first["l2"] == 0.0 and abs(first["cosine"] - 1) < 1e-9
    s = res["summary"]
    # injected noise shifts the next step's distribution: G' agrees less with G than with plain BN
    assert s["noisy BN"]["mean_cosine"] < s["BN"]["mean_cosine"]
