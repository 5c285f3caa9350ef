"""Experiment ``inference`` on a tiny setting: files, identical weights, Alg. 2 vs stale averages."""
from __future__ import annotations

import pytest
import torch

import bnlab
from bnlab.lab.experiments import get_experiment, run_experiment
from bnlab.lab.experiments.inference import batch_stat_accuracy


def test_inference_tiny_run(tmp_path):
    exp = get_experiment("inference")
    res = run_experiment(exp, exp.presets["tiny"], tmp_path, preset="tiny")
    for name in ("config.json", "results.json", "inference.png"):
        assert (tmp_path / name).exists(), name
    # the BN momentum only touches running statistics, never the weights
    assert res["max_weight_difference_across_momenta"] == 0.0
    stale = res["accuracy"]["0.001"][0]
    assert stale["recalibrated (Alg. 2)"] >= stale["moving average"]


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
