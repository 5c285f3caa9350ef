"""The verdict rule: paired differences over seeds, their 95% interval, outcomes and verdicts.

A check compares a treatment arm with a baseline arm on one per-seed metric. Seeds pair
the two arms (seed *s* of the treatment with seed *s* of the baseline: same data order,
same initial weights where the networks allow), so the quantity judged is the paired
difference ``d_s = treatment_s − baseline_s``. Its mean has a two-sided 95% Student-t
interval ``mean ± t_{0.975, n−1} · sd / √n`` over the ``n`` seeds whose values are both
finite. The direction and the minimum effect ``m ≥ 0`` are fixed before the run:

- ``greater`` (the treatment is higher by more than m): *holds* when ``ci_low > m``,
  *contradicted* when ``ci_high < −m``, else *inconclusive*;
- ``less``: the mirror image (*holds* when ``ci_high < −m``, *contradicted* when ``ci_low > m``);
- ``within`` (the arms agree to within m): *holds* when ``−m < ci_low`` and ``ci_high < m``,
  *contradicted* when the whole interval lies beyond ±m, else *inconclusive*;
- ``at_most`` (the treatment is not higher by m or more — "does not increase"): *holds* when
  ``ci_high < m``, *contradicted* when ``ci_low > m``; ``at_least`` is its mirror (not lower
  by m or more: *holds* when ``ci_low > −m``, *contradicted* when ``ci_high < −m``).

A control cannot fail ``within``/``at_most``/``at_least`` checks, so every experiment has at
least one ``greater``/``less`` check; that one is what keeps a control from being reproduced.

With fewer than two finite pairs the interval is undefined and the check is *inconclusive*.
The verdict of an experiment: *reproduced* when every check holds, *contradicted* when any is
contradicted, *inconclusive* otherwise; when the claim has named, separable parts and the
parts disagree, *partly* (the report names which parts held); *not run* without results.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = [
    "VERDICT_RULE", "VERDICTS", "OUTCOMES", "DIRECTIONS", "t_quantile_975", "mean_ci",
    "paired_ci", "outcome", "verdict", "part_verdicts", "Interval",
]

VERDICTS = ("reproduced", "contradicted", "inconclusive", "partly", "not run")
OUTCOMES = ("holds", "contradicted", "inconclusive")
DIRECTIONS = ("greater", "less", "within", "at_most", "at_least")

VERDICT_RULE = (
    "Each check compares a treatment arm with a baseline arm on one metric, paired by seed. "
    "Its estimate is the mean over seeds of the paired difference (treatment − baseline) with a "
    "two-sided 95% Student-t interval; its direction and minimum effect m were fixed before the run. "
    "A check holds when the whole interval lies beyond m in the claimed direction (an agreement "
    "check: inside ±m; a 'does not increase' check: below +m), is contradicted when it lies beyond m "
    "the other way (agreement: wholly outside ±m; 'does not increase': wholly above +m), and is "
    "inconclusive otherwise. Verdict: reproduced = every check holds; "
    "contradicted = any check is contradicted; inconclusive = otherwise; partly = the claim's named "
    "parts disagree (the parts that held are listed); not run = no results. A negative control "
    "(the treatment arm replaced by the baseline network with other seeds) must not be reproduced."
)

# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (standard tables).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """``t_{0.975}`` with ``df`` degrees of freedom: the table to 30, then the Cornish-Fisher
    expansion ``z + (z³ + z)/(4 df) + (5z⁵ + 16z³ + 3z)/(96 df²)`` (error < 1e-4 there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with a 95% t-interval (``nan`` bounds when n < 2)."""

    estimate: float
    low: float
    high: float
    n: int


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def mean_ci(values: Sequence[float | None]) -> Interval:
    """Mean and 95% t-interval over the finite ``values``."""
    vals = [float(v) for v in values if _finite(v)]
    n = len(vals)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = sum(vals) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def paired_ci(treatment: Sequence[float | None], baseline: Sequence[float | None]) -> Interval:
    """Interval of the mean paired difference; pairs with a non-finite side are dropped."""
    if len(treatment) != len(baseline):
        raise ValueError(f"paired values need equal lengths, got {len(treatment)} and {len(baseline)}")
    return mean_ci([t - b for t, b in zip(treatment, baseline) if _finite(t) and _finite(b)])


def outcome(ci: Interval, direction: str, min_effect: float) -> str:
    """``holds`` | ``contradicted`` | ``inconclusive`` for an interval (see the module docstring)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if not (min_effect >= 0):
        raise ValueError(f"min_effect must be >= 0, got {min_effect}")
    lo, hi, m = ci.low, ci.high, min_effect
    if ci.n < 2 or not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    if direction == "less":
        lo, hi = -hi, -lo
    if direction == "at_least":
        lo, hi = -hi, -lo                     # "not lower by m" = "the negated difference is at most m"
    if direction in ("at_most", "at_least"):
        if hi < m:
            return "holds"
        return "contradicted" if lo > m else "inconclusive"
    if direction == "within":
        if -m < lo and hi < m:
            return "holds"
        return "contradicted" if lo > m or hi < -m else "inconclusive"
    if lo > m:
        return "holds"
    return "contradicted" if hi < -m else "inconclusive"


def _plain(outcomes: Sequence[str]) -> str:
    if outcomes and all(o == "holds" for o in outcomes):
        return "reproduced"
    return "contradicted" if "contradicted" in outcomes else "inconclusive"


def verdict(outcomes: Sequence[str], parts: Sequence[str] | None = None) -> str:
    """The experiment's verdict from its checks' outcomes (``parts[i]``: the part check i tests)."""
    if not outcomes:
        return "not run"
    if not parts or len(set(parts)) < 2:
        return _plain(outcomes)
    per_part = {p: _plain([o for o, q in zip(outcomes, parts) if q == p]) for p in dict.fromkeys(parts)}
    values = set(per_part.values())
    if len(values) == 1:
        return values.pop()
    return "partly" if "reproduced" in values else _plain(outcomes)


def part_verdicts(outcomes: Sequence[str], parts: Sequence[str]) -> dict[str, str]:
    """The verdict of each named part (what ``partly`` refers to)."""
    return {p: _plain([o for o, q in zip(outcomes, parts) if q == p]) for p in dict.fromkeys(parts)}
