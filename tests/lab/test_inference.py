"""Experiment ``inference``: one network per seed serves every arm; the staleness check can fail."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import bnlab
from bnlab.lab.experiments import get_experiment, run_experiment
from bnlab.lab.experiments.inference import batch_stat_accuracy

pytestmark = pytest.mark.usefixtures("reference_kernels")


def test_inference_tiny_run(tmp_path):
    exp = get_experiment("inference")
    cfg = exp.presets["tiny"]
    res = run_experiment(exp, cfg, tmp_path, preset="tiny", with_control=False)
    for name in ("config.json", "results.json", "inference.png"):
        assert (tmp_path / name).exists(), name
    arms = res["arms"]
    # the momentum never touches the weights: every arm of a seed is the same network, evaluated its own way
    modes = [k for k in arms["recalibrated"]["per_seed"] if k != "test_acc"]
    for k in modes:
        assert arms["ema_small"]["per_seed"][k] == arms["recalibrated"]["per_seed"][k]
    small = f"ema_{cfg.small_momentum:g}_corrected"
    assert arms["ema_small"]["per_seed"]["test_acc"] == arms["recalibrated"]["per_seed"][small]
    assert arms["ema_default"]["per_seed"]["test_acc"] == arms["recalibrated"]["per_seed"]["ema_0.1_raw"]
    assert [(c["treatment"], c["direction"]) for c in res["checks"]] == [("ema_small", "less")]


def test_staleness_check_fails_for_a_network_that_does_not_change(tmp_path):
    # the old check (raw average at momentum 0.001 over 300 steps) was stale by construction; with the bias
    # correction a network that barely moves (lr 1e-6) has an up-to-date average, so the check does not hold
    # (tiny: momentum 0.01 over 30 steps, where the raw average still weighs its initial 0 / 1 by 0.74)
    exp = get_experiment("inference")
    cfg = dataclasses.replace(exp.presets["tiny"], lr=1e-6, seeds=(0, 1, 2))
    res = run_experiment(exp, cfg, tmp_path, preset=None, with_control=False)
    stale = next(c for c in res["checks"] if c["treatment"] == "ema_small")
    assert stale["outcome"] != "holds"
    assert abs(stale["estimate"]) < 3.0


def test_batch_stat_accuracy_matches_training_mode_forward():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), bnlab.BatchNorm2d(3), torch.nn.Flatten(),
                                torch.nn.Linear(3 * 4 * 4, 4)).eval()
    x, y = torch.randn(10, 1, 6, 6), torch.randint(0, 4, (10,))
    model.train()
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))  # the function's fixed order
    xs, ys = x[order], y[order]
    with torch.no_grad():
        expect = torch.cat([model(xs[:5]), model(xs[5:])]).argmax(1).eq(ys).float().mean().item()
    model.eval()
    before = model[1].running_mean.clone()
    assert batch_stat_accuracy(model, x, y, 5) == pytest.approx(expect, abs=1e-6)
    assert torch.equal(model[1].running_mean, before) and not model.training  # the model is untouched
