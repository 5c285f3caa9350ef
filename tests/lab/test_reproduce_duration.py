"""``bnlab reproduce`` states its expected duration before it starts (sum of per-experiment estimates)."""
from __future__ import annotations

from bnlab.lab.experiments import REGISTRY, get_experiment
from bnlab.lab.reproduce import expected_duration


def test_every_experiment_has_a_full_estimate_and_quick_defaults_to_its_budget():
    for name in REGISTRY:
        exp = get_experiment(name)
        assert exp.expected_seconds("quick") == float(exp.budget_s)
        if "full" in exp.presets:
            assert exp.expected_seconds("full") > exp.expected_seconds("quick"), name


def test_expected_duration_sums_the_estimates_and_names_missing_ones():
    loaded = {n: get_experiment(n) for n in ("fig1", "lr")}
    total = sum(e.expected_seconds("full") for e in loaded.values())
    line = expected_duration(loaded, "full")
    assert f"~{total / 60:.0f} min" in line and "no estimate" not in line
    assert f"~{total / 120:.0f} min" in expected_duration(loaded, "full", jobs=2)
    assert "no estimate for fig1, lr" in expected_duration(loaded, "paper")
