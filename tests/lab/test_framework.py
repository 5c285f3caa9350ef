"""The Experiment framework and its verdict rule, on toy experiments that train nothing."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest

from bnlab.lab.experiments.framework import (CONTROL_SEED_OFFSET, Arm, Check, Experiment,
                                             ExperimentConfig, SeedResult, run, run_with_control)
from bnlab.lab.report.verdict import mean_ci, outcome, paired_ci, t_quantile_975, verdict, Interval


# ------------------------------------------------------------------ the verdict rule


@pytest.mark.parametrize("df", [1, 2, 4, 9, 29, 30, 31, 60, 200])
def test_t_quantile_matches_scipy(df):
    stats = pytest.importorskip("scipy.stats")
    assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-3)


def test_mean_ci_matches_a_numpy_derivation():
    vals = [1.0, 2.5, 2.0, 4.0, 3.1]
    ci = mean_ci(vals)
    a = np.array(vals)
    half = 2.776 * a.std(ddof=1) / math.sqrt(len(a))  # t_{0.975, 4}
    assert ci.estimate == pytest.approx(a.mean()) and ci.n == 5
    assert (ci.low, ci.high) == pytest.approx((a.mean() - half, a.mean() + half))


def test_paired_ci_pairs_by_seed_and_drops_non_finite_pairs():
    # a large shared seed effect, a constant +1 difference: the paired interval is exactly [1, 1]
    t, b = [11.0, 21.0, 31.0, float("nan")], [10.0, 20.0, 30.0, 5.0]
    ci = paired_ci(t, b)
    assert ci.n == 3 and ci.estimate == pytest.approx(1.0) and ci.low == pytest.approx(1.0)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_ci([1.0], [1.0, 2.0])


@pytest.mark.parametrize("lo, hi, direction, m, expected", [
    (0.6, 2.0, "greater", 0.5, "holds"),
    (0.4, 2.0, "greater", 0.5, "inconclusive"),       # the interval touches the minimum effect
    (-3.0, -0.6, "greater", 0.5, "contradicted"),
    (-3.0, -0.4, "greater", 0.5, "inconclusive"),     # below zero but not beyond −m
    (-2.0, -0.6, "less", 0.5, "holds"),
    (0.6, 2.0, "less", 0.5, "contradicted"),
    (-0.4, 0.4, "within", 0.5, "holds"),
    (-0.4, 0.6, "within", 0.5, "inconclusive"),
    (0.6, 0.9, "within", 0.5, "contradicted"),
    (-3.0, 0.4, "at_most", 0.5, "holds"),             # "does not increase by 0.5 or more"
    (0.4, 0.6, "at_most", 0.5, "inconclusive"),
    (0.6, 3.0, "at_most", 0.5, "contradicted"),
    (-0.4, 3.0, "at_least", 0.5, "holds"),
    (-0.6, -0.4, "at_least", 0.5, "inconclusive"),
    (-3.0, -0.6, "at_least", 0.5, "contradicted"),
])
def test_outcome_rule(lo, hi, direction, m, expected):
    assert outcome(Interval((lo + hi) / 2, lo, hi, 3), direction, m) == expected


def test_outcome_needs_two_seeds():
    assert outcome(mean_ci([5.0]), "greater", 0.0) == "inconclusive"


@pytest.mark.parametrize("outcomes, parts, expected", [
    (["holds", "holds"], None, "reproduced"),
    (["holds", "inconclusive"], None, "inconclusive"),
    (["holds", "contradicted"], None, "contradicted"),
    (["holds", "holds", "inconclusive"], ["a", "a", "b"], "partly"),
    (["holds", "contradicted"], ["a", "b"], "partly"),
    (["inconclusive", "contradicted"], ["a", "b"], "contradicted"),
    (["holds", "holds"], ["a", "b"], "reproduced"),
    ([], None, "not run"),
])
def test_verdicts(outcomes, parts, expected):
    assert verdict(outcomes, parts) == expected


# ------------------------------------------------------------------ a toy experiment


@dataclass(frozen=True)
class ToyConfig(ExperimentConfig):
    effect: float = 5.0       # what the treatment adds to the metric
    noise: float = 1.0
    min_gain: float = 1.0


class Toy(Experiment):
    """metric = seed-dependent level + effect (treatment only) + noise; nothing trains."""

    name = "toy"
    title = "Toy"
    claim = "the treatment raises the score"
    source = "tests"
    config_cls = ToyConfig
    presets = {"tiny": ToyConfig()}

    def __init__(self):
        self.calls = []

    def arms(self, cfg):
        return [Arm("base", "baseline", baseline=True), Arm("treat", "treatment", params={"effect": cfg.effect}),
                Arm("extra", "an arm no check uses", params={"effect": 0.0})]

    def checks(self, cfg):
        return [Check("treatment scores higher", "score", "treat", "base", "greater", cfg.min_gain, "points")]

    def train(self, cfg, arm, seed, ctx):
        self.calls.append((arm.name, seed, ctx.control))
        rng = np.random.default_rng(seed)
        level = 10.0 * (seed % 7)                    # a big seed effect that pairing removes
        score = level + arm.params.get("effect", 0.0) + cfg.noise * rng.standard_normal()
        return SeedResult({"score": float(score)}, {"curve": [1.0, 2.0]})

    def tables(self, cfg, results):
        return [{"caption": "scores <b>", "header": ["arm", "mean"],
                 "rows": [[a, f"{mean_ci(results.values(a, 'score')).estimate:.2f}"] for a in results.arms]}]


def test_run_writes_results_json_with_the_contract(tmp_path):
    exp = Toy()
    cfg = ToyConfig(seeds=(0, 1, 2, 3))
    rec, _ = run(exp, cfg, tmp_path, preset="tiny")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(rec))
    assert saved["verdict"] == "reproduced" and saved["seeds"] == [0, 1, 2, 3]
    (c,) = saved["checks"]
    assert {"statement", "estimate", "ci_low", "ci_high", "min_effect", "outcome"} <= set(c)
    diffs = np.array(c["treatment_values"]) - np.array(c["baseline_values"])
    assert c["estimate"] == pytest.approx(diffs.mean()) and c["ci_low"] > cfg.min_gain
    assert saved["arms"]["treat"]["per_seed"]["score"] == c["treatment_values"]
    assert saved["arms"]["base"]["seeds"] == [0, 1, 2, 3]
    config = json.loads((tmp_path / "config.json").read_text())   # pre-registered before training
    assert config["checks"][0]["min_effect"] == cfg.min_gain and config["checks"][0]["direction"] == "greater"
    series = json.loads((tmp_path / "series.json").read_text())
    assert series["treat"][0] == {"seed": 0, "curve": [1.0, 2.0]}
    assert "scores &lt;b&gt;" in (tmp_path / "report.html").read_text()
    assert "scores \\<b\\>" in (tmp_path / "results.md").read_text()


def test_a_real_opposite_effect_is_contradicted(tmp_path):
    rec, _ = run(Toy(), ToyConfig(effect=-5.0), tmp_path)
    assert rec["verdict"] == "contradicted"


def test_an_effect_below_the_minimum_is_not_reproduced(tmp_path):
    rec, _ = run(Toy(), ToyConfig(effect=0.5, noise=0.05, min_gain=1.0), tmp_path)
    assert rec["checks"][0]["ci_low"] > 0 and rec["verdict"] != "reproduced"


def test_control_replaces_the_treatment_by_the_baseline_on_other_seeds(tmp_path):
    exp = Toy()
    rec, _ = run(exp, ToyConfig(), tmp_path, control=True)
    trained = {(a, s) for a, s, _ in exp.calls}
    # the treatment arm's slot is the baseline network (effect 0) at seeds + 1000; 'extra' is not trained
    assert trained == {("base", s) for s in (0, 1, 2)} | {("base", s + CONTROL_SEED_OFFSET) for s in (0, 1, 2)}
    assert rec["control"] is True and rec["verdict"] != "reproduced"
    assert rec["arms"]["treat"]["seeds"] == [s + CONTROL_SEED_OFFSET for s in (0, 1, 2)]


def test_run_with_control_reuses_the_baseline_and_links_the_control(tmp_path):
    exp = Toy()
    rec = run_with_control(exp, ToyConfig(), tmp_path)
    base_runs = [c for c in exp.calls if c[0] == "base" and c[1] < CONTROL_SEED_OFFSET]
    assert len(base_runs) == 3                      # the baseline arm is trained once, not twice
    assert rec["verdict"] == "reproduced" and rec["control_summary"]["verdict"] != "reproduced"
    ctl = json.loads((tmp_path / "control" / "results.json").read_text())
    assert ctl["arms"]["base"]["per_seed"] == rec["arms"]["base"]["per_seed"]
    assert "control/results.json" in (tmp_path / "report.html").read_text()


def test_config_rejects_duplicate_seeds_and_bad_checks():
    with pytest.raises(ValueError, match="distinct"):
        ToyConfig(seeds=(0, 0))
    with pytest.raises(ValueError, match="direction"):
        Check("x", "m", "a", "b", "bigger", 1.0)
    with pytest.raises(ValueError, match="min_effect"):
        Check("x", "m", "a", "b", "greater", -1.0)
