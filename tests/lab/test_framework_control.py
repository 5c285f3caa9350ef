"""Every registered experiment, tiny preset: the negative control is never ``reproduced``.

``--control`` trains the baseline arm's network in place of every treatment arm (other
seeds), so no real effect exists; a verdict rule that called such a run ``reproduced``
would be passing noise. The run must also write the results.json contract.
"""
from __future__ import annotations

import json

import pytest

from bnlab.lab.experiments import REGISTRY, get_experiment, run_experiment

pytestmark = pytest.mark.usefixtures("reference_kernels")


@pytest.mark.parametrize("name", list(REGISTRY))
def test_control_is_never_reproduced(name, tmp_path):
    try:
        exp = get_experiment(name)
    except ModuleNotFoundError as exc:
        if exc.name != f"bnlab.lab.experiments.{REGISTRY[name]}":
            raise
        pytest.skip(f"experiment module for {name} not present in this checkout")
    assert {"tiny", "quick", "paper"} <= set(exp.presets), sorted(exp.presets)
    cfg = exp.presets["tiny"]
    assert any(c.direction != "within" for c in exp.checks(cfg)), "a control needs a directional check"
    rec = run_experiment(exp, cfg, tmp_path, preset="tiny", control=True)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["control"] is True and saved["verdict"] == rec["verdict"]
    assert saved["verdict"] != "reproduced", [(c["statement"], c["outcome"]) for c in saved["checks"]]
    assert saved["verdict"] in {"contradicted", "inconclusive", "partly"}
    for c in saved["checks"]:
        assert {"statement", "estimate", "ci_low", "ci_high", "min_effect", "outcome"} <= set(c)
    base = exp.baseline_arm(cfg).name
    assert saved["arms"][base]["seeds"] == list(cfg.seeds)
    for arm, info in saved["arms"].items():
        if arm != base:
            assert all(s >= 1000 for s in info["seeds"]), (arm, info["seeds"])
