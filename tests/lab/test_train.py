"""The trainer: repeatability, resume equality, divergence, schedules, checkpoints, logs."""
from __future__ import annotations

import json

import pytest
import torch


from bnlab.lab.runs.checkpoint import load_checkpoint
from bnlab.lab.engine.metrics import MetricsLog, read_metrics, truncate_after
from bnlab.lab.engine.optim import learning_rate
from bnlab.lab.engine.progress import progress_enabled
from bnlab.lab.engine.train import LoopConfig, fit, select_step, steps_to_reach
from bnlab.lab.models import MnistMLP, norm_factory


pytestmark = pytest.mark.usefixtures("reference_kernels")


def _data(n=240, n_test=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n + n_test, 1, 28, 28, generator=g)
    y = (x.flatten(1)[:, :10].argmax(1))  # a learnable labelling
    return (x[:n], y[:n]), (x[n:], y[n:])


def _model(norm="batch", seed=0):
    torch.manual_seed(seed)
    return MnistMLP(norm_factory(norm, 1) if norm != "none" else None)


CFG = LoopConfig(lr=0.3, momentum=0.9, steps=40, batch_size=20, eval_every=7, ckpt_every=10)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_cpu_run_repeats_bit_for_bit(tmp_path, optimizer):
    train, test = _data()
    cfg = LoopConfig(**{**CFG.__dict__, "optimizer": optimizer, "lr": 0.3 if optimizer == "sgd" else 1e-3})
    m1, m2 = _model(), _model()
    r1 = fit(m1, train, test, cfg, tmp_path / "a")
    r2 = fit(m2, train, test, cfg, tmp_path / "b")
    _assert_same_state(_state(m1), _state(m2))
    assert r1["history"] == r2["history"]
    assert r1["status"] == "completed" and r1["steps"] == 40
    # evaluations at every 7th step and at the end
    assert [h["step"] for h in r1["history"]] == [7, 14, 21, 28, 35, 40]


class _Interrupt(Exception):
    pass


def _interrupt_at(step):
    def hook(s):
        if s == step:
            raise _Interrupt
    return hook


@pytest.mark.parametrize("stop_at", [13, 20])  # between checkpoints, and right on one
def test_resume_reaches_the_same_numbers(tmp_path, stop_at):
    train, test = _data()
    full = _model()
    ref = fit(full, train, test, CFG, tmp_path / "full")

    run = tmp_path / "resumed"
    with pytest.raises(_Interrupt):
        fit(_model(), train, test, CFG, run, on_step=_interrupt_at(stop_at))
    assert load_checkpoint(run / "checkpoints" / "model.pt")["step"] == 10 * (stop_at // 10)
    resumed_model = _model(seed=123)  # different init: everything must come from the checkpoint
    res = fit(resumed_model, train, test, CFG, run, resume=True)

    _assert_same_state(_state(full), _state(resumed_model))
    assert res["history"] == ref["history"]                      # no wall-clock field: records repeat exactly
    assert read_metrics(run / "metrics.jsonl") == read_metrics(tmp_path / "full" / "metrics.jsonl")


def test_resume_refuses_other_settings(tmp_path):
    train, test = _data()
    fit(_model(), train, test, CFG, tmp_path)
    other = LoopConfig(**{**CFG.__dict__, "lr": 0.1})
    with pytest.raises(ValueError, match="lr"):
        fit(_model(), train, test, other, tmp_path, resume=True)


def test_non_finite_loss_marks_run_diverged(tmp_path):
    (x, y), test = _data()
    x = x.clone()
    x[:] = float("nan")
    model = _model("none")
    before = _state(model)
    res = fit(model, (x, y), test, CFG, tmp_path)
    assert res["status"] == "diverged" and res["diverged_at_step"] == 1
    assert res["final"] is None and res["selected"] is None
    _assert_same_state(before, _state(model))  # the non-finite gradient was not applied
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert recs[-1]["event"] == "diverged" and recs[-1]["train_loss"] is None


def test_huge_learning_rate_diverges_without_crash(tmp_path):
    train, test = _data()
    cfg = LoopConfig(optimizer="sgd", lr=1e38, momentum=0.0, steps=30, batch_size=20,
                     eval_every=5, ckpt_every=0)
    res = fit(_model("none"), train, test, cfg, tmp_path)
    assert res["status"] == "diverged" and res["diverged_at_step"] <= 30


@pytest.mark.parametrize("schedule,step,expected", [
    ("constant", 0, 0.5), ("constant", 999, 0.5),
    ("step", 99, 0.5), ("step", 100, 0.05), ("step", 250, 0.005),
    ("exponential", 0, 0.5), ("exponential", 50, 0.5 * 0.1 ** 0.5), ("exponential", 200, 0.005),
])
def test_learning_rate_schedules(schedule, step, expected):
    assert learning_rate(0.5, schedule, step, 100, 0.1) == pytest.approx(expected, rel=1e-12)


def test_schedule_is_applied_in_training(tmp_path):
    train, test = _data()
    cfg = LoopConfig(lr=0.2, schedule="step", lr_step=10, lr_gamma=0.5, steps=30, batch_size=20,
                     eval_every=5, ckpt_every=0)
    res = fit(_model(), train, test, cfg, tmp_path)
    # the lr logged at an evaluation is the one used for that evaluation's last step (t = step-1)
    assert [h["lr"] for h in res["history"]] == [0.2 * 0.5 ** ((s - 1) // 10) for s in range(5, 31, 5)]


def test_steps_to_reach():
    hist = [{"step": 10, "val_acc": 0.5}, {"step": 20, "val_acc": 0.92}, {"step": 30, "val_acc": 0.9}]
    assert steps_to_reach(hist, 0.9) == 20
    assert steps_to_reach(hist, 0.95) is None


def test_select_step_uses_validation_never_test():
    # the test accuracy peaks at step 10, the validation accuracy at step 20 (tie at 30: earliest wins)
    hist = [{"step": 10, "val_acc": 0.5, "test_acc": 0.99}, {"step": 20, "val_acc": 0.9, "test_acc": 0.6},
            {"step": 30, "val_acc": 0.9, "test_acc": 0.7}]
    assert select_step(hist)["step"] == 20
    assert select_step([{"step": 5, "test_acc": 0.9}, {"step": 9, "test_acc": 0.1}])["step"] == 9  # no val: last


def test_fit_reports_test_numbers_at_the_validation_selected_step(tmp_path):
    train, test = _data()
    val = (train[0][:60], train[1][:60])
    res = fit(_model(), train, test, CFG, tmp_path, val=val)
    hist = res["history"]
    assert all({"val_acc", "val_loss", "test_acc", "test_loss"} <= set(r) for r in hist)
    best_val = max(r["val_acc"] for r in hist)
    sel = res["selected"]
    assert sel["val_acc"] == best_val and res["selected_step"] == sel["step"]
    assert sel["step"] == min(r["step"] for r in hist if r["val_acc"] == best_val)
    assert sel["test_acc"] == next(r["test_acc"] for r in hist if r["step"] == sel["step"])


def test_metrics_log_and_truncate(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path, run="a") as log:
        for s in (1, 2, 3):
            log.log(s, loss=float(s), bad=float("nan"))
    with MetricsLog(path, run="b") as log:
        log.log(1, loss=9.0)
    with open(path, "a") as f:
        f.write('{"step": 4, "run"')  # a line torn by a kill
    truncate_after(path, 1, run="a")
    recs = read_metrics(path)
    assert recs == [{"step": 1, "run": "a", "loss": 1.0, "bad": None}, {"step": 1, "run": "b", "loss": 9.0}]
    json.loads(path.read_text().splitlines()[0])  # strict JSON (no NaN)


@pytest.mark.parametrize("env,expected", [({"CI": "true"}, False), ({"BNLAB_PROGRESS": "1", "CI": "1"}, True),
                                          ({"BNLAB_PROGRESS": "0"}, False)])
def test_progress_quiet_in_ci(monkeypatch, env, expected):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BNLAB_PROGRESS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert progress_enabled() is expected


def test_progress_quiet_when_not_a_tty(monkeypatch, capsys):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BNLAB_PROGRESS", raising=False)
    assert progress_enabled() is False  # pytest captures stdout: not a terminal
