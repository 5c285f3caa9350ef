"""Experiment ``batch-size`` on a tiny setting: files, steps = epochs × N / B, lr scaling."""
from __future__ import annotations

from bnlab.lab.experiments import get_experiment, run_experiment
from bnlab.lab.metrics import read_metrics


def test_batch_size_tiny_run(tmp_path):
    exp = get_experiment("batch-size")
    cfg = exp.presets["tiny"]
    res = run_experiment(exp, cfg, tmp_path, preset="tiny")
    for name in ("config.json", "results.json", "metrics.jsonl", "batch_size.png"):
        assert (tmp_path / name).exists(), name
    last = {}
    for rec in read_metrics(tmp_path / "metrics.jsonl"):
        last[rec["run"]] = rec
    for norm in cfg.norms:
        for bs in cfg.batch_sizes:
            rec = last[f"{norm}/b{bs}/seed0"]
            assert rec["step"] == cfg.epochs * (cfg.train_limit // bs)   # a fixed number of epochs
            assert abs(rec["lr"] - cfg.lr_at_32 * bs / 32) < 1e-12         # linear scaling
            assert 0.0 <= res["final_test_acc"][norm][str(bs)][0] <= 1.0
