"""Experiment ``batch-size``: where the norm sits, Ghost BN below the batch, three evaluation modes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bnlab.lab.engine.metrics import read_metrics
from bnlab.lab.experiments import get_experiment, run_experiment
from bnlab.lab.experiments.batch_size import PRESETS, norm_layer
from bnlab.lab.models import small_cnn

pytestmark = pytest.mark.usefixtures("reference_kernels")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_arm_normalizes_feature_maps_only(preset):
    exp = get_experiment("batch-size")
    cfg = PRESETS[preset]
    for arm in exp.arms(cfg):
        b = arm.params["batch"]
        model = small_cnn(norm_layer(arm.params["norm"], b, 100, cfg), widths=(4, 8), hidden=16)
        shapes = []
        hooks = [m.register_forward_hook(lambda mod, i, o: shapes.append(tuple(i[0].shape)))
                 for m in model.modules() if "norm" in type(m).__name__.lower()]
        model(torch.randn(b, 1, 28, 28))
        for h in hooks:
            h.remove()
        assert shapes == [(b, 4, 28, 28), (b, 8, 14, 14)], arm.name   # never on (N, hidden, 1, 1)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_ghost_batches_are_below_the_batch(preset):
    # the old Ghost BN (ghost 16) equalled BN at every batch <= 16, so it compared BN with itself
    cfg = PRESETS[preset]
    torch.manual_seed(0)
    ghost = norm_layer("ghost", cfg.large_batch, 100, cfg)(3)
    assert 2 <= ghost.virtual_batch_size < cfg.large_batch
    plain = nn.BatchNorm2d(3)
    x = torch.randn(cfg.large_batch, 3, 4, 4) * torch.linspace(0.5, 3, cfg.large_batch).view(-1, 1, 1, 1)
    assert not torch.allclose(ghost(x), plain(x), atol=1e-3)          # it differs from BN on the batch


def test_batch_size_tiny_run(tmp_path):
    exp = get_experiment("batch-size")
    cfg = exp.presets["tiny"]
    res = run_experiment(exp, cfg, tmp_path, preset="tiny", with_control=False)
    for name in ("config.json", "results.json", "metrics.jsonl", "batch_size.png"):
        assert (tmp_path / name).exists(), name
    last = {rec["run"]: rec for rec in read_metrics(tmp_path / "metrics.jsonl")}
    n_train = cfg.train_limit
    for arm in exp.arms(cfg):
        b = arm.params["batch"]
        rec = last[f"{arm.name}/seed0"]
        assert rec["step"] == cfg.epochs * (n_train // b)               # a fixed number of epochs
        assert abs(rec["lr"] - cfg.lr_at_32 * b / 32) < 1e-12            # linear scaling
        per_seed = res["arms"][arm.name]["per_seed"]
        assert per_seed["test_acc"] == per_seed["test_acc_eval"]         # the checks read eval mode
        if arm.params["norm"] in ("group", "layer"):                     # no batch statistics: one answer
            assert per_seed["test_acc_eval"] == per_seed["test_acc_train"] == per_seed["test_acc_recal"]
    assert any(c["part"] == "ghost" and c["treatment"].startswith("ghost") for c in res["checks"])
