"""Experiment fig1 on tiny settings: outputs, the claim's direction, the probe's oracle."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import bnlab
from bnlab.lab.experiments import get_experiment, run_experiment
from bnlab.lab.experiments.fig1 import PRESETS, Fig1Config, sigmoid_input_probe
from bnlab.lab.metrics import read_metrics
from bnlab.lab.models import MnistMLP, norm_factory
from bnlab.lab.runs.runfiles import read_json
from bnlab.lab.train import LoopConfig, fit

PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("reference_kernels")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fig1")
    exp = get_experiment("fig1")
    bnlab.set_backend("reference")
    results = run_experiment(exp, PRESETS["tiny"], out, preset="tiny")
    return exp, out, results


def test_fig1_writes_its_outputs(tiny_run):
    exp, out, results = tiny_run
    for name in ("config.json", "metrics.jsonl", "results.json", *exp.figures):
        assert (out / name).is_file(), name
    for name in exp.figures:
        assert (out / name).read_bytes()[:8] == PNG
    cfg = read_json(out / "config.json")
    assert cfg["preset"] == "tiny" and cfg["config"]["steps"] == 200 and cfg["config"]["batch_size"] == 60
    assert Fig1Config(**{**cfg["config"], "targets": tuple(cfg["config"]["targets"])}) == PRESETS["tiny"]
    saved = read_json(out / "results.json")
    assert saved["networks"]["bn"]["final_test_acc"] == results["networks"]["bn"]["final_test_acc"]
    assert set(saved["networks"]["plain"]) >= {"final_test_acc", "best_test_acc", "steps_to_reach", "status"}
    recs = read_metrics(out / "metrics.jsonl")
    for tag in ("bn", "plain"):
        steps = [r["step"] for r in recs if r["run"] == tag]
        assert steps == [50, 100, 150, 200]
        for r in recs:
            assert r["sigmoid_in_p15"] <= r["sigmoid_in_p50"] <= r["sigmoid_in_p85"]


def test_fig1_direction_of_the_claim(tiny_run):
    _, _, results = tiny_run
    bn, plain = results["networks"]["bn"], results["networks"]["plain"]
    assert bn["status"] == plain["status"] == "completed"
    # 200 steps: BN is well on its way (> 80%) while the plain sigmoid net is near chance
    assert bn["final_test_acc"] >= 0.8
    assert bn["final_test_acc"] > plain["final_test_acc"] + 0.3
    assert bn["steps_to_reach"]["0.8"] is not None and plain["steps_to_reach"]["0.8"] is None


def test_fig1_summary_lists_the_numbers(tiny_run):
    exp, out, results = tiny_run
    md = exp.summarize(results, out)
    assert f"{100 * results['networks']['bn']['final_test_acc']:.1f}%" in md
    assert "fig1_a_test_accuracy.png" in md and "with BN" in md and "without BN" in md


def _tiny_data(n=300):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 28, 28, generator=g)
    return (x[:240], x.flatten(1)[:240, :10].argmax(1)), (x[240:], x.flatten(1)[240:, :10].argmax(1))


def test_probe_matches_numpy_and_does_not_change_training(tmp_path):
    train, test = _tiny_data()
    probe = train[0][:100]
    cfg = LoopConfig(lr=0.5, momentum=0.0, steps=30, batch_size=20, eval_every=10, ckpt_every=0)

    def make():
        torch.manual_seed(0)
        return MnistMLP(norm_factory("batch", 1))

    with_probe, without = make(), make()
    hist = fit(with_probe, train, test, cfg, tmp_path / "a", on_eval=sigmoid_input_probe(probe, 3))["history"]
    fit(without, train, test, cfg, tmp_path / "b")
    for k, v in with_probe.state_dict().items():  # probing restores BN's running statistics
        assert torch.equal(v, without.state_dict()[k]), k
    # oracle: NumPy percentiles of BN(Wh) for unit 3, batch statistics of the probe (training mode)
    with torch.no_grad():
        h = probe.flatten(1).double()
        for lin, bn in zip(with_probe.linears, with_probe.norms):
            a = h @ lin.weight.double().T
            z = (a - a.mean(0)) / torch.sqrt(a.var(0, unbiased=False) + bn.eps) * bn.weight.double() + bn.bias.double()
            h = torch.sigmoid(z)
    expected = np.percentile(z[:, 3].numpy(), [15, 50, 85])
    got = [hist[-1][f"sigmoid_in_p{p}"] for p in (15, 50, 85)]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_fig1_config_validation():
    with pytest.raises(ValueError, match="neuron"):
        dataclasses.replace(PRESETS["quick"], neuron=100)
    assert PRESETS["quick"].steps == 10_000 and PRESETS["quick"].batch_size == 60
    assert PRESETS["paper"].dataset == "mnist" and PRESETS["paper"].binarize and PRESETS["paper"].steps == 50_000
