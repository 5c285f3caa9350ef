"""wall-clock: interleaved step timing, censored time-to-target, the tiny run (no speed is asserted)."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from bnlab.lab.experiments import get_experiment, run_experiment
from bnlab.lab.experiments.wall_clock import PRESETS, interleaved_step_times, step_costs

pytestmark = pytest.mark.usefixtures("reference_kernels")


def test_interleaved_timing_times_every_arm(monkeypatch):
    from bnlab.lab.experiments import wall_clock

    calls = []
    real = wall_clock.BatchLoader.batch

    def spy(self, step):
        calls.append(step)
        return real(self, step)

    monkeypatch.setattr(wall_clock.BatchLoader, "batch", spy)
    cfg = dataclasses.replace(PRESETS["tiny"], timing_rounds=3, timing_steps=4)
    train = (torch.rand(200, 1, 28, 28), torch.randint(0, 10, (200,)))
    nets = [("plain", 0), ("bnlab", 0), ("torch", 0), ("plain", 1000)]
    times = interleaved_step_times(cfg, 0, train, nets)
    # 3 rounds rounded up to whole rotations of 4 networks: every network holds every position once
    assert set(times) == set(nets) and all(len(t) == 4 and min(t) > 0 for t in times.values())
    # 5 warm-up steps per network, then 4 rounds x 4 networks x 4 steps: all see the same batches
    assert len(calls) == 4 * 5 + 4 * 4 * 4
    assert calls[:20] == [0, 1, 2, 3, 4] * 4
    assert calls[20:36] == [5, 6, 7, 8] * 4


def test_step_costs_pair_rounds():
    times = {("plain", 0): [0.010, 0.020, 0.011], ("bnlab", 0): [0.013, 0.026, 0.0143]}
    ms, ratio = step_costs(times, ("bnlab", 0), ("plain", 0))
    assert ms == pytest.approx(14.3) and ratio == pytest.approx(1.3)  # the load of round 2 cancels
    assert step_costs(times, ("plain", 0), ("plain", 0))[1] == 1.0


def test_unreached_target_is_censored_at_the_last_step(tmp_path):
    exp = get_experiment("wall-clock")
    cfg = dataclasses.replace(PRESETS["tiny"], target_acc=100.0, seeds=(0, 1), timing_rounds=1, timing_steps=2)
    run_experiment(exp, cfg, tmp_path, preset="tiny", with_control=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    for arm in saved["arms"].values():
        ps = arm["per_seed"]
        assert ps["reached"] == [0.0, 0.0] and ps["steps_to_target"] == [float(cfg.steps)] * 2
        for n, ms, sec in zip(ps["steps_to_target"], ps["step_ms"], ps["sec_to_target"]):
            assert sec == pytest.approx(n * ms / 1000)


def test_control_stand_ins_are_timed_with_their_baseline(tmp_path, monkeypatch):
    from bnlab.lab.experiments import wall_clock

    sessions = []
    real = wall_clock.interleaved_step_times

    def spy(cfg, seed, train, nets):
        sessions.append((seed, list(nets)))
        return real(cfg, seed, train, nets)

    monkeypatch.setattr(wall_clock, "interleaved_step_times", spy)
    exp = get_experiment("wall-clock")
    cfg = dataclasses.replace(PRESETS["tiny"], timing_rounds=1, timing_steps=2)
    run_experiment(exp, cfg, tmp_path, preset="tiny", with_control=True)
    # one session per seed, shared by the run and its control; the control's plain stand-ins in it
    assert [s for s, _ in sessions] == list(cfg.seeds)
    for seed, nets in sessions:
        assert nets == [("plain", seed), ("bnlab", seed), ("torch", seed), ("plain", seed + 1000),
                        ("plain", seed + 2000)]


def test_tiny_run(tmp_path):
    exp = get_experiment("wall-clock")
    cfg = PRESETS["tiny"]
    rec = run_experiment(exp, cfg, tmp_path, preset="tiny", with_control=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [c["part"] for c in saved["checks"]] == ["per step"] * 2 + ["to accuracy"] * 3
    assert saved["tables"][0]["header"][1:3] == ["ms per step", "× plain step"]
    assert saved["arms"]["plain"]["per_seed"]["step_ratio"] == [1.0] * len(cfg.seeds)
    assert rec["verdict"] in {"reproduced", "contradicted", "inconclusive", "partly"}
    assert (tmp_path / "wall_clock.png").read_bytes().startswith(b"\x89PNG")


def test_ratio_wording():
    from bnlab.lab.experiments.wall_clock import _times

    assert _times(3.14) == "3.1x sooner" and _times(0.5) == "2.0x later" and _times(float("nan")) == "—"
