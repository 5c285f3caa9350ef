"""The Experiment framework: arms × seeds, pre-registered checks, one writer of every output.

An experiment is a subclass of :class:`Experiment` with a frozen config class (a subclass of
:class:`ExperimentConfig`) and named presets (``tiny`` for tests, ``quick``, ``full``,
``paper``). It declares

- :meth:`Experiment.arms`: the networks/conditions compared; exactly one is the baseline
  (``Arm(..., baseline=True)``), the others are treatments;
- :meth:`Experiment.checks`: :class:`Check` s — each a stated comparison of one per-seed metric
  between a treatment arm and a baseline arm, with a direction and a minimum effect taken from
  the config (so they are fixed, and written to ``config.json``, before anything trains);
- :meth:`Experiment.train`: one (arm, seed) → a :class:`SeedResult` (scalar metrics that the
  checks read, and series for figures);
- optionally :meth:`~Experiment.figures`, :meth:`~Experiment.tables`, :meth:`~Experiment.published`,
  :meth:`~Experiment.deviations` for the report.

:func:`run` does the rest: it trains every (arm, seed), computes every check's paired
difference and 95% interval and the verdict (:mod:`bnlab.lab.report.verdict`), and writes
``config.json``, ``results.json``, ``series.json``, ``results.md`` and the report section.
With ``control=True`` every treatment arm is replaced by the baseline arm's network trained
on other seeds (seed + 1000·k for the k-th treatment): a negative control, whose verdict
must never be ``reproduced``.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

from ...config import check, config_to_dict, option
from ...report.verdict import DIRECTIONS, outcome, paired_ci, part_verdicts, verdict

__all__ = [
    "Arm", "Check", "SeedResult", "ExperimentConfig", "Experiment", "Context", "Results",
    "CONTROL_SEED_OFFSET", "control_arms", "evaluate_checks",
]

CONTROL_SEED_OFFSET = 1000



@dataclass(frozen=True)
class ExperimentConfig:
    """Fields every experiment config has; subclass it (``@dataclass(frozen=True)``)."""

    seeds: tuple[int, ...] = option((0, 1, 2), "seeds; arms are paired by seed")
    threads: int = option(1, "torch CPU threads while it runs (0 = torch's default)")

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        check(len(self.seeds) >= 1, "seeds must name at least one seed")
        check(len(set(self.seeds)) == len(self.seeds), f"seeds must be distinct, got {self.seeds}")
        check(self.threads >= 0, f"threads must be >= 0, got {self.threads}")


@dataclass(frozen=True)
class Arm:
    """One network/condition of a comparison. ``params`` is free-form (read by ``train``)."""

    name: str
    label: str
    baseline: bool = False
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """A stated comparison: ``metric`` of ``treatment`` vs ``baseline``, paired by seed.

    ``direction``: ``"greater"`` (treatment − baseline > ``min_effect``), ``"less"``
    (< −``min_effect``), ``"within"`` (|difference| < ``min_effect``), ``"at_most"``
    (difference < ``min_effect``: "does not increase") or ``"at_least"`` (> −``min_effect``). ``unit`` is the
    metric's unit as printed (``"points"`` for accuracy in percent). ``part`` names the
    separable part of the claim the check belongs to (``""`` when the claim is one piece).
    """

    statement: str
    metric: str
    treatment: str
    baseline: str
    direction: str
    min_effect: float
    unit: str = ""
    part: str = ""

    def __post_init__(self) -> None:
        check(self.direction in DIRECTIONS, f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        check(self.min_effect >= 0, f"min_effect must be >= 0, got {self.min_effect}")


@dataclass
class SeedResult:
    """What one (arm, seed) run returns: scalar ``metrics`` (read by checks) and ``series``."""

    metrics: dict[str, float]
    series: dict[str, Any] = field(default_factory=dict)
    status: str = "completed"
    seconds: float = 0.0


@dataclass
class Context:
    """What :meth:`Experiment.train` gets besides the config: where to write, the data, flags."""

    out_dir: Path
    data: Any
    resume: bool = False
    control: bool = False

    def tag(self, arm: Arm | str, seed: int) -> str:
        """The run tag of one (arm, seed): its ``metrics.jsonl`` records and checkpoint name."""
        return f"{arm if isinstance(arm, str) else arm.name}/seed{seed}"


@dataclass
class Results:
    """Per-arm, per-seed results of a run (what figures and tables are drawn from)."""

    arms: dict[str, Arm]
    seeds: dict[str, list[int]]                 # arm -> the seeds it ran (control: offset)
    runs: dict[str, list[SeedResult]]           # arm -> one SeedResult per seed

    def values(self, arm: str, metric: str) -> list[float | None]:
        """Per-seed values of ``metric`` in ``arm`` (None where a run lacks it)."""
        return [r.metrics.get(metric) for r in self.runs[arm]]

    def series(self, arm: str, key: str) -> list[Any]:
        return [r.series.get(key) for r in self.runs[arm]]


class Experiment:
    """Base class of every experiment (see the module docstring). Subclasses set the class
    attributes and implement :meth:`arms`, :meth:`checks` and :meth:`train`."""

    name: ClassVar[str]
    title: ClassVar[str]                          # the claim, as a heading
    claim: ClassVar[str]                          # the claim, one or two sentences
    source: ClassVar[str]                         # who claims it, where
    config_cls: ClassVar[type]
    presets: ClassVar[Mapping[str, Any]]          # "tiny", "quick", "full", "paper", ...
    parts: ClassVar[Mapping[str, str]] = {}       # separable parts of the claim: name -> text
    budget_s: ClassVar[float] = 75.0              # the quick preset's share of `reproduce` (2 cores)
    # estimated wall seconds of a preset (run + control, idle 2-core machine, threads 1), printed by
    # `bnlab reproduce` before it starts; "quick" defaults to budget_s, presets without one are unknown
    expected_s: ClassVar[Mapping[str, float]] = {}
    # how a preset's protocol was changed, and why (e.g. cut to fit a time budget): printed among the
    # deviations of every run of that preset, so a reader of its numbers sees the change
    preset_changes: ClassVar[Mapping[str, Sequence[str]]] = {}

    def expected_seconds(self, preset: str) -> float | None:
        """Estimated wall time of ``preset`` in seconds, or ``None`` when there is no estimate."""
        if preset in self.expected_s:
            return float(self.expected_s[preset])
        return float(self.budget_s) if preset == "quick" else None

    def arms(self, cfg) -> Sequence[Arm]:
        raise NotImplementedError

    def checks(self, cfg) -> Sequence[Check]:
        raise NotImplementedError

    def load(self, cfg) -> Any:
        """The data every (arm, seed) trains on (loaded once per run); None by default."""
        return None

    def train(self, cfg, arm: Arm, seed: int, ctx: Context) -> SeedResult:
        raise NotImplementedError

    def figures(self, cfg, results: Results, out_dir: Path) -> Sequence[Mapping[str, str]]:
        """Draw figures into ``out_dir`` (with :mod:`bnlab.lab.report.figures`); their records."""
        return ()

    def tables(self, cfg, results: Results) -> Sequence[Mapping[str, Any]]:
        """Tables of our numbers: ``{"caption", "header", "rows"}`` of strings."""
        return ()

    def published(self) -> Sequence[Mapping[str, Any]]:
        """Tables of the published numbers."""
        return ()

    def notes(self, cfg, results: Results) -> Sequence[str]:
        """Sentences that read the numbers (e.g. where a sensitivity row disagrees with the headline)."""
        return ()

    def deviations(self, cfg) -> Sequence[str]:
        """How this protocol differs from the published one (and protocol changes made after
        seeing a result)."""
        return ()

    def baseline_arm(self, cfg) -> Arm:
        base = [a for a in self.arms(cfg) if a.baseline]
        if len(base) != 1:
            raise ValueError(f"experiment {self.name} must have exactly one baseline arm, has {len(base)}")
        return base[0]


def control_arms(exp: Experiment, cfg) -> list[tuple[Arm, Arm, int]]:
    """(arm as named in the checks, arm actually trained, seed offset) for a negative control.

    Only the arms the checks compare are trained (arms that feed tables alone are left out).
    """
    base = exp.baseline_arm(cfg)
    used = {name for c in exp.checks(cfg) for name in (c.treatment, c.baseline)} | {base.name}
    out, k = [], 0
    for arm in exp.arms(cfg):
        if arm.name not in used:
            continue
        if arm.baseline:
            out.append((arm, arm, 0))
        else:
            k += 1
            out.append((arm, base, k * CONTROL_SEED_OFFSET))
    return out


def evaluate_checks(checks: Sequence[Check], results: Results, parts: Mapping[str, str]) -> tuple[str, list[dict]]:
    """(verdict, check records) of ``checks`` on ``results`` (:mod:`~bnlab.lab.report.verdict`)."""
    records = []
    for c in checks:
        t, b = results.values(c.treatment, c.metric), results.values(c.baseline, c.metric)
        ci = paired_ci(t, b)
        records.append({
            "statement": c.statement, "metric": c.metric, "treatment": c.treatment,
            "baseline": c.baseline, "direction": c.direction, "min_effect": c.min_effect,
            "unit": c.unit, "part": c.part, "estimate": _num(ci.estimate), "ci_low": _num(ci.low),
            "ci_high": _num(ci.high), "n": ci.n, "outcome": outcome(ci, c.direction, c.min_effect),
            "treatment_values": t, "baseline_values": b,
        })
    outcomes = [r["outcome"] for r in records]
    names = [r["part"] for r in records] if parts else None
    return verdict(outcomes, names), records


def part_outcomes(records: Sequence[dict]) -> dict[str, str]:
    """The verdict of each named part of the claim (empty when the claim is one piece)."""
    names = [r["part"] for r in records]
    return part_verdicts([r["outcome"] for r in records], names) if any(names) else {}


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else v


def train_all(exp: Experiment, cfg, ctx: Context, plan: Sequence[tuple[Arm, Arm, int]],
              reuse: Results | None = None, on_done: Callable[[str, int, SeedResult], None] | None = None,
              ) -> Results:
    """Train every (arm, seed) of ``plan``; arms found in ``reuse`` (same seeds) are taken from it."""
    arms, seeds, runs = {}, {}, {}
    for named, trained, offset in plan:
        arms[named.name] = named
        seeds[named.name] = [s + offset for s in cfg.seeds]
        if reuse is not None and named.name in reuse.runs and offset == 0:
            runs[named.name] = reuse.runs[named.name]
            continue
        runs[named.name] = []
        for seed in seeds[named.name]:
            t0 = time.perf_counter()
            res = exp.train(cfg, trained, seed, ctx)
            res.seconds = res.seconds or time.perf_counter() - t0
            runs[named.name].append(res)
            if on_done is not None:
                on_done(named.name, seed, res)
    return Results(arms, seeds, runs)


def config_record(exp: Experiment, cfg, preset: str | None, control: bool) -> dict[str, Any]:
    """What ``config.json`` holds: the resolved config, arms and the pre-registered checks."""
    return {
        "experiment": exp.name, "preset": preset, "control": control,
        "config": config_to_dict(cfg),
        "arms": [{"name": a.name, "label": a.label, "baseline": a.baseline} for a in exp.arms(cfg)],
        "checks": [dataclasses.asdict(c) for c in exp.checks(cfg)],
    }
