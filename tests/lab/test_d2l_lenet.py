"""d2l-lenet: d2l's LeNet layout (parameter count by hand), BN arms against torch, the tiny run."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import bnlab
from bnlab.lab.experiments import get_experiment, run_experiment
from bnlab.lab.experiments.d2l_lenet import D2L_RANGE, PRESETS, _versus_range
from bnlab.lab.models.lenet import LeNet

pytestmark = pytest.mark.usefixtures("reference_kernels")


def test_lenet_layout_matches_d2l():
    # by hand: conv 1->6 (5x5) 150+6, conv 6->16 2400+16, fc 256->120 30720+120, 120->84 10080+84, 84->10 840+10
    plain = LeNet()
    assert sum(p.numel() for p in plain.parameters()) == 44426
    bn = LeNet(bnlab.BatchNorm2d, bnlab.BatchNorm1d)
    # BN drops the 6+16+120+84 biases of the layers it follows and adds γ, β for each of those units
    assert sum(p.numel() for p in bn.parameters()) == 44426 - 226 + 2 * 226
    kinds = [type(m).__name__ for m in bn.net]
    assert kinds == ["Conv2d", "BatchNorm2d", "Sigmoid", "AvgPool2d", "Conv2d", "BatchNorm2d", "Sigmoid",
                     "AvgPool2d", "Flatten", "Linear", "BatchNorm1d", "Sigmoid", "Linear", "BatchNorm1d",
                     "Sigmoid", "Linear"]
    assert bn(torch.rand(5, 1, 28, 28)).shape == (5, 10)


def test_bnlab_and_torch_lenet_agree_step_by_step():
    # oracle: torch.nn.BatchNorm on the same initial weights and batches
    torch.manual_seed(3)
    a = LeNet(bnlab.BatchNorm2d, bnlab.BatchNorm1d)
    torch.manual_seed(3)
    b = LeNet(nn.BatchNorm2d, nn.BatchNorm1d)
    opts = [torch.optim.SGD(m.parameters(), lr=1.0) for m in (a, b)]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.rand(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)
        for m, opt in zip((a, b), opts):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb
        torch.testing.assert_close(pa.float(), pb.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("values, text", [([86.0, 86.5, 87.0], "inside (whole interval)"),
                                          ([80.0, 81.0, 82.0], "below"), ([90.0, 91.0, 92.0], "above"),
                                          ([83.0, 89.9, 86.0], "inside (mean)"), ([], "—")])
def test_versus_d2l_range(values, text):
    assert D2L_RANGE == (84.0, 89.0)
    assert _versus_range(values) == text


def test_presets_follow_d2l_protocol():
    for name in ("quick", "full", "paper"):
        cfg = PRESETS[name]
        assert (cfg.batch_size, cfg.lr, cfg.epochs, cfg.momentum) == (256, 1.0, 10, 0.0)
        assert cfg.dataset == "fashion-mnist" and len(cfg.seeds) >= 3
    assert PRESETS["full"].fallback_dataset == "" and PRESETS["full"].test_limit == 0


def test_tiny_run(tmp_path):
    exp = get_experiment("d2l-lenet")
    cfg = PRESETS["tiny"]
    rec = run_experiment(exp, cfg, tmp_path, preset="tiny", with_control=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["verdict"] == rec["verdict"] in {"reproduced", "contradicted", "inconclusive"}
    assert [c["direction"] for c in saved["checks"]] == ["greater", "greater", "within"]
    # same seeds, same math: the two BN implementations give (nearly) the same numbers
    b, t = (saved["arms"][a]["per_seed"]["test_acc_final"] for a in ("bnlab", "torch"))
    assert all(abs(x - y) <= 1.0 for x, y in zip(b, t))
    table = saved["tables"][0]
    assert "84-89%" in table["header"][-1] and "mnist-embedded" in table["caption"]
    assert "0.84-0.89" in saved["published"][0]["rows"][0][1]
    png = (tmp_path / saved["figures"][0]["file"]).read_bytes()
    assert png.startswith(b"\x89PNG")
