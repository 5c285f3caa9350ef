"""fig1 on the framework: tiny end-to-end run, the probe against NumPy, the drift metrics."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from bnlab.lab.engine.train import LoopConfig, fit
from bnlab.lab.experiments import get_experiment, run_experiment
from bnlab.lab.experiments.fig1 import PRESETS, drift_metrics, sigmoid_input_probe
from bnlab.lab.models import MnistMLP, norm_factory

pytestmark = pytest.mark.usefixtures("reference_kernels")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fig1")
    exp = get_experiment("fig1")
    cfg = dataclasses.replace(PRESETS["tiny"], sensitivity=(0.1, 0.5))
    return exp, cfg, out, run_experiment(exp, cfg, out, preset="tiny")


def test_fig1_tiny_writes_the_contract(tiny_run):
    exp, cfg, out, rec = tiny_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["verdict"] in {"reproduced", "contradicted", "inconclusive", "partly"}
    assert [c["part"] for c in saved["checks"]] == ["accuracy", "accuracy", "stability", "stability"]
    assert saved["seeds"] == list(cfg.seeds) and len(cfg.seeds) >= 3
    for name in ("plain", "bn", "plain@init0.1,lr0.5", "bn@init0.1,lr0.5"):
        per_seed = saved["arms"][name]["per_seed"]
        assert len(per_seed["test_acc"]) == len(cfg.seeds)
        assert all(0 <= v <= 100 for v in per_seed["test_acc"])            # percent
    # the control: BN replaced by the plain network on seeds + 1000, never reproduced
    ctl = json.loads((out / "control" / "results.json").read_text())
    assert ctl["control"] and ctl["verdict"] != "reproduced"
    assert ctl["arms"]["bn"]["seeds"] == [s + 1000 for s in cfg.seeds]
    assert "plain@init0.1,lr0.5" not in ctl["arms"]                          # sensitivity arms are not needed
    for f in saved["figures"]:
        data = (out / f["file"]).read_bytes()
        assert data.startswith(b"\x89PNG") and f["caption"]
    sens = saved["tables"][1]
    assert sens["header"][:2] == ["init std", "lr"] and [r[:2] for r in sens["rows"]] == [["0.01", "0.5"], ["0.1", "0.5"]]


def test_fig1_tiny_bn_learns_where_the_plain_net_does_not(tiny_run):
    # tiny preset: 200 steps at init std 0.01; the plain sigmoid net is still at chance level
    _, _, _, rec = tiny_run
    acc = next(c for c in rec["checks"] if c["metric"] == "test_acc")
    assert acc["outcome"] == "holds" and acc["ci_low"] > 20
    assert min(rec["arms"]["bn"]["per_seed"]["test_acc"]) > 60


def test_test_accuracy_is_reported_at_the_validation_selected_step(tiny_run):
    _, _, out, rec = tiny_run
    series = json.loads((out / "series.json").read_text())
    for arm in ("plain", "bn"):
        per_seed = rec["arms"][arm]["per_seed"]
        for k, run in enumerate(series[arm]):
            i = run["step"].index(per_seed["selected_step"][k])
            assert run["val_acc"][i] == max(run["val_acc"])
            assert per_seed["test_acc"][k] == run["test_acc"][i]


def _tiny_data(n=300):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 28, 28, generator=g)
    return (x[:240], x.flatten(1)[:240, :10].argmax(1)), (x[240:], x.flatten(1)[240:, :10].argmax(1))


def test_probe_matches_numpy_for_every_unit_and_does_not_change_training(tmp_path):
    train, test = _tiny_data()
    probe = train[0][:100]
    cfg = LoopConfig(lr=0.5, momentum=0.0, steps=30, batch_size=20, eval_every=10, ckpt_every=0)

    def make():
        torch.manual_seed(0)
        return MnistMLP(norm_factory("batch", 1))

    with_probe, without = make(), make()
    hist = fit(with_probe, train, test, cfg, tmp_path / "a", on_eval=sigmoid_input_probe(probe))["history"]
    fit(without, train, test, cfg, tmp_path / "b")
    for k, v in with_probe.state_dict().items():  # probing restores BN's running statistics
        assert torch.equal(v, without.state_dict()[k]), k
    # oracle: NumPy percentiles of BN(Wh), batch statistics of the probe (training mode), all 100 units
    with torch.no_grad():
        h = probe.flatten(1).double()
        for lin, bn in zip(with_probe.linears, with_probe.norms):
            a = h @ lin.weight.double().T
            z = (a - a.mean(0)) / torch.sqrt(a.var(0, unbiased=False) + bn.eps) * bn.weight.double() + bn.bias.double()
            h = torch.sigmoid(z)
    expected = np.percentile(z.numpy(), [15, 50, 85], axis=0)             # (3, 100)
    got = np.array([hist[-1][f"sigmoid_in_p{p}"] for p in (15, 50, 85)])
    assert got.shape == (3, 100)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_drift_metrics_oracle():
    # unit 0: every percentile +1 (spread unchanged); unit 1: the spread doubles about a fixed median
    first = {"sigmoid_in_p15": [0.0, -0.5], "sigmoid_in_p50": [1.0, 0.0], "sigmoid_in_p85": [2.0, 0.5]}
    last = {"sigmoid_in_p15": [1.0, -1.0], "sigmoid_in_p50": [2.0, 0.0], "sigmoid_in_p85": [3.0, 1.0]}
    m = drift_metrics([first, last])
    # |Δ|: unit 0 = (1, 1, 1), unit 1 = (0.5, 0, 0.5): mean over 6 = 4/6
    assert m["drift"] == pytest.approx(4 / 6)
    # spread: unit 0 2 → 2 (log 1 = 0), unit 1 1 → 2 (log 2)
    assert m["spread_change"] == pytest.approx(np.log(2) / 2)


def test_fig1_presets():
    with pytest.raises(ValueError, match="sensitivity"):
        dataclasses.replace(PRESETS["quick"], sensitivity=(0.1,))
    assert set(PRESETS) >= {"tiny", "quick", "full", "paper"}
    assert len(PRESETS["quick"].seeds) >= 3 and len(PRESETS["paper"].seeds) >= 5
    assert PRESETS["paper"].dataset == "mnist" and PRESETS["paper"].binarize and PRESETS["paper"].steps == 50_000
    assert PRESETS["full"].dataset == "fashion-mnist"
