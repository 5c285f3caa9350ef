"""scale-shift: what each affine mode learns, the band probe against a direct count, the tiny run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from bnlab.lab.experiments import get_experiment, run_experiment
from bnlab.lab.experiments.scale_shift import BAND, PRESETS, band_probe
from bnlab.lab.models.affine_mlp import AffineMLP

pytestmark = pytest.mark.usefixtures("reference_kernels")


def _step(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("act", ["sigmoid", "relu"])
def test_affine_modes_learn_what_they_say(act):
    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    models = {mode: AffineMLP(act, mode) for mode in ("affine", "beta", "none")}
    for m in models.values():
        _step(m, x, y)
    g, b = models["affine"].affine_parameters()
    assert not torch.allclose(g, torch.ones_like(g)) and not torch.allclose(b, torch.zeros_like(b))
    g, b = models["beta"].affine_parameters()
    assert torch.equal(g, torch.ones_like(g)) and not torch.allclose(b, torch.zeros_like(b))
    assert all(bn.weight is None for bn in models["none"].norms)
    g, b = models["none"].affine_parameters()
    assert torch.equal(g, torch.ones(300)) and torch.equal(b, torch.zeros(300))
    # affine=False in training mode: each unit's input to the nonlinearity has batch mean 0 and
    # variance v / (v + eps), v the batch variance of W·u (Alg. 1), recomputed here layer by layer
    m = models["none"].train()
    _, pre = m.forward_with_preacts(x)
    h = x.flatten(1)
    for lin, bn, z in zip(m.linears, m.norms, pre):
        with torch.no_grad():
            v = lin(h).double().var(0, unbiased=False)
        torch.testing.assert_close(z.mean(0), torch.zeros(z.shape[1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(z.double().var(0, unbiased=False), v / (v + bn.eps), atol=1e-5, rtol=1e-4)
        h = torch.sigmoid(z) if act == "sigmoid" else torch.relu(z)


def test_plain_variant_has_no_norm():
    m = AffineMLP("relu", norm=None)
    assert all(isinstance(n, nn.Identity) for n in m.norms) and all(l.bias is not None for l in m.linears)
    assert m.affine_parameters()[0].numel() == 0


def test_band_probe_counts_like_numpy():
    torch.manual_seed(1)
    model = AffineMLP("sigmoid", "affine")
    probe = torch.rand(50, 784)
    out = band_probe(probe)(model, 0)
    model.eval()
    with torch.no_grad():
        _, pre = model.forward_with_preacts(probe)
    per_layer = [100 * float(np.mean(np.abs(z.numpy()) <= BAND)) for z in pre]
    np.testing.assert_allclose(out["band_per_layer"], per_layer)
    assert out["band"] == pytest.approx(sum(per_layer) / 3)
    assert model.training is False  # the hook restores the mode it found (eval here)


def test_tiny_run(tmp_path):
    exp = get_experiment("scale-shift")
    rec = run_experiment(exp, PRESETS["tiny"], tmp_path, preset="tiny", with_control=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["parts"]) == {"sigmoid", "relu"}
    assert sorted(saved["arms"]) == sorted(f"{a}-{m}" for a in ("sigmoid", "relu") for m in ("none", "affine", "beta"))
    for name, arm in saved["arms"].items():
        assert all(0 <= v <= 100 for v in arm["per_seed"]["band"])
        if name.endswith("-none") or name.endswith("-beta"):
            assert arm["per_seed"]["gamma_std"] == [0.0] * len(PRESETS["tiny"].seeds)
    assert len(saved["figures"]) == 2 and rec["verdict"] in {"reproduced", "contradicted", "inconclusive", "partly"}
