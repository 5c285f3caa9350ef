"""Interleaved timing, robust summaries, page faults and machine load for ``bnlab bench``.

Every measurement here is a *paired* comparison: in each round every peer runs once,
in an order that rotates from round to round, so drift and neighbours on a shared
machine hit all peers alike. Reported: the median and the 25th–75th percentiles.
"""
from __future__ import annotations

import itertools
import os
import resource
import statistics
import time
from typing import Callable

__all__ = ["summary", "interleaved", "minor_faults", "load_average", "ratio_summary", "Clock", "timed"]


def minor_faults() -> int:
    """Minor page faults of this process so far (``getrusage`` ``ru_minflt``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def load_average() -> float:
    """The 1-minute load average of the machine."""
    return os.getloadavg()[0]


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    v = sorted(values)
    if len(v) == 1:
        return v[0], v[0], v[0]
    q = statistics.quantiles(v, n=4, method="inclusive")
    return q[0], statistics.median(v), q[2]


def summary(seconds: list[float], unit: str = "ms") -> dict:
    """Median, 25th/75th percentiles, minimum (``*_ms`` or ``*_us``), relative spread and n.

    On a busy machine the minimum is the best estimate of an undisturbed call.
    """
    scale = {"ms": 1e3, "us": 1e6}[unit]
    lo, med, hi = _quartiles([s * scale for s in seconds])
    return {f"median_{unit}": med, f"p25_{unit}": lo, f"p75_{unit}": hi, f"min_{unit}": min(seconds) * scale,
            "spread": (hi - lo) / med if med > 0 else 0.0, "n": len(seconds)}


def ratio_summary(num: list[float], den: list[float]) -> dict:
    """Per-round paired ratios num/den (median, 25th/75th percentiles) and the ratio of the minima."""
    lo, med, hi = _quartiles([a / b for a, b in zip(num, den) if b > 0])
    return {"median": med, "p25": lo, "p75": hi, "of_minima": min(num) / min(den)}


def interleaved(steps: dict[str, Callable[[], float]], reps: int, warmup: int,
                lead: str | None = None) -> tuple[dict, dict]:
    """Run every step once per round, rotating the order; ``reps`` timed rounds after ``warmup``.

    ``lead``: a step (the copy-bandwidth probe) that opens every round, the other steps after
    it in every order in turn (all permutations, cycled). Over each full cycle each peer then
    follows the lead and each other peer equally often: a step leaves the caches and the
    allocator's free list to the next, and with all steps rotating, the lead among them, one
    peer of two followed the other twice as often as it was followed by it (see
    docs/bench/README.md). Without ``lead`` the steps rotate.

    Each step returns ``(seconds, faults)`` of the part it timed itself (see :func:`timed`).
    Returns ``(seconds, faults)``: per peer the list of timed seconds and the list of
    minor page faults during each timed part.
    """
    names = [n for n in steps if n != lead]
    if lead is None:
        orders = [names[k:] + names[:k] for k in range(len(names))]
    else:
        orders = [[lead, *p] for p in itertools.permutations(names)]
    seconds = {n: [] for n in steps}
    faults = {n: [] for n in steps}
    for r in range(warmup + reps):
        for n in orders[r % len(orders)]:
            t, f = steps[n]()
            if r >= warmup:
                seconds[n].append(t)
                faults[n].append(f)
    return seconds, faults


class Clock:
    """Seconds and minor page faults between ``start()`` and ``stop()``."""

    def start(self) -> None:
        self.f0 = minor_faults()
        self.t0 = time.perf_counter()

    def stop(self) -> tuple[float, int]:
        t = time.perf_counter() - self.t0
        return t, minor_faults() - self.f0


def timed(fn: Callable[[], object]) -> Callable[[], tuple[float, int]]:
    """A step that times one call of ``fn``: returns ``(seconds, faults)``."""
    clock = Clock()

    def step() -> tuple[float, int]:
        clock.start()
        fn()
        return clock.stop()
    return step
