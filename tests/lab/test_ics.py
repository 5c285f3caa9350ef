"""Experiment ``ics`` on its tiny preset: outputs, the first-layer identity, readable layer names, checks."""
from __future__ import annotations

import json

import pytest
import torch

import bnlab
from bnlab.lab.experiments import get_experiment, run_experiment
from bnlab.lab.measure import distribution_shift, layer_input_stats
from bnlab.lab.models import layer_labels, small_cnn
from bnlab.lab.models.noisy import NoisyBatchNorm2d

pytestmark = pytest.mark.usefixtures("reference_kernels")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("ics")
    exp = get_experiment("ics")
    return exp, run_experiment(exp, exp.presets["tiny"], out, preset="tiny", with_control=False), out


def test_ics_outputs_and_first_layer_identity(tiny):
    exp, res, out = tiny
    for name in ("config.json", "results.json", "series.json", "metrics.jsonl", "ics_training.png", "ics_layers.png"):
        assert (out / name).exists(), name
    series = json.loads((out / "series.json").read_text())
    assert set(series) == {"bn", "noisy", "plain"}
    for arm in ("plain", "bn"):  # nothing precedes layer 1: G' = G exactly (noisy BN: G' sees the next draw)
        for seed_run in series[arm]:
            assert all(abs(cos[0] - 1) < 1e-9 for cos in seed_run["ics_cos"])
            assert all(rel[0] == 0.0 for rel in seed_run["ics_rel_l2"])
    assert series["bn"][0]["layers"] == ["conv 1", "conv 2", "fc 1", "fc 2"]


def test_ics_checks_compare_training_and_eval_with_the_noise_expectation(tiny):
    exp, res, out = tiny
    checks = {(c["metric"], c["treatment"], c["baseline"]): c for c in res["checks"]}
    assert checks[("train_acc", "noisy", "bn")]["direction"] == "within"
    assert checks[("test_acc", "noisy", "bn")]["direction"] == "within"
    # the noise must visibly move the layer inputs (a directional check: a control cannot pass it)
    assert checks[("input_shift", "noisy", "bn")]["direction"] == "greater"
    assert checks[("ics_cos", "bn", "plain")]["direction"] == "at_most"     # "does not reduce": one-sided
    for arm in ("noisy", "bn", "plain"):
        assert all(v >= 0 for v in res["arms"][arm]["per_seed"]["input_shift"])
    noisy = res["arms"]["noisy"]["per_seed"]
    # evaluated twice: with E[noise] folded into γ, β (the check) and with the noise dropped (the table)
    assert all(0 <= v <= 100 for v in noisy["test_acc"] + noisy["test_acc_noise_dropped"])
    assert res["verdict"] in ("reproduced", "contradicted", "inconclusive", "partly")


def test_noise_alone_moves_layer_inputs_and_bn_alone_does_not():
    # at fixed weights two probes of a BN network see identical layer inputs (shift 0); noisy BN redraws
    # (μ, σ) every forward, so its next layer's inputs move by ~|μ₁ − μ₂| ≈ 1/3 of their spread and more
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28)
    for norm, expect in ((bnlab.BatchNorm2d, "zero"), (NoisyBatchNorm2d, "large")):
        model = small_cnn(norm, widths=(4, 8), hidden=16)
        layers = list(layer_labels(model))[1:]
        shifts = [distribution_shift(layer_input_stats(model, x, layers), layer_input_stats(model, x, layers))
                  for _ in range(10)]
        if expect == "zero":
            assert max(shifts) == 0.0
        else:
            assert sum(shifts) / len(shifts) > 0.2
