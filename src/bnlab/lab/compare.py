"""``bnlab compare RUN_A RUN_B``: two runs' ``metrics.jsonl`` side by side (table + figure).

Every run folder logs one JSON record per evaluation (``step``, optionally ``run`` — the
network's tag when a folder trains several, e.g. ``bn``/``plain`` — and numeric metrics
such as ``train_loss``, ``test_acc``, ``lr``). :func:`compare_runs` reads both logs
(damaged lines skipped, :func:`~bnlab.lab.runs.runfiles.read_jsonl`), prints for every
(network, metric) both runs share the value at each run's last logged step and the
difference B − A, and draws each metric's curves over steps, A solid, B dashed.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

from .config import ConfigError
from .runs.runfiles import RunFileError, read_jsonl

__all__ = ["load_curves", "compare_table", "compare_runs", "plot_comparison"]

Curves = dict[tuple[str, str], list[tuple[int, float]]]  # (network tag, metric) -> [(step, value)]
_SKIP = {"step", "run", "event"}
MAX_PANELS = 6


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_curves(run_dir: str | os.PathLike, flag: str = "RUN") -> Curves:
    """The numeric series of ``run_dir/metrics.jsonl``; one-line error if there are none."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        raise ConfigError(f"{flag} {run_dir}: no such run folder")
    if not path.is_file():
        inner = sorted(p.parent.name for p in run_dir.glob("*/metrics.jsonl"))
        hint = f"; its sub-folders {inner} have one: compare those" if inner else ""
        raise ConfigError(f"{flag} {run_dir}: no metrics.jsonl in this folder{hint}")
    curves: Curves = {}
    for rec in read_jsonl(path):
        step = rec.get("step")
        if not isinstance(step, int):
            continue
        tag = str(rec.get("run") or "")
        for key, value in rec.items():
            if key not in _SKIP and _is_number(value):
                curves.setdefault((tag, key), []).append((step, float(value)))
    if not curves:
        raise RunFileError(f"{flag} {run_dir}: metrics.jsonl holds no numeric records")
    for series in curves.values():
        series.sort()
    return curves


def _shared_keys(a: Curves, b: Curves, metrics: Sequence[str] | None) -> list[tuple[str, str]]:
    keys = sorted(set(a) & set(b), key=lambda k: (k[1], k[0]))
    if metrics:
        unknown = sorted(set(metrics) - {m for _, m in keys})
        if unknown:
            have = sorted({m for _, m in keys})
            raise ConfigError(f"--metrics {' '.join(unknown)}: not logged by both runs; both log {have}")
        keys = [k for k in keys if k[1] in metrics]
    if not keys:
        raise RunFileError("the two runs log no metric in common (nothing to compare)")
    return keys


def compare_table(a: Curves, b: Curves, keys: Sequence[tuple[str, str]], names: tuple[str, str]) -> str:
    """A plain-text table: metric, network, A's last value (@step), B's, and B − A."""
    rows = [("metric", "network", f"A: {names[0]}", f"B: {names[1]}", "B - A")]
    for tag, metric in keys:
        (sa, va), (sb, vb) = a[(tag, metric)][-1], b[(tag, metric)][-1]
        rows.append((metric, tag or "-", f"{va:.4g} @{sa}", f"{vb:.4g} @{sb}", f"{vb - va:+.4g}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_comparison(a: Curves, b: Curves, keys: Sequence[tuple[str, str]], names: tuple[str, str],
                    path: str | os.PathLike) -> Path:
    """One panel per metric (at most :data:`MAX_PANELS`): A solid, B dashed, a colour per network."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from .runs.atomic import atomic_open

    metrics = list(dict.fromkeys(m for _, m in keys))[:MAX_PANELS]
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    tags = list(dict.fromkeys(t for t, _ in keys))
    colours = {t: f"C{i % 10}" for i, t in enumerate(tags)}
    for ax, metric in zip(axes.flat, metrics):
        for tag in tags:
            if (tag, metric) not in a:
                continue
            label = f" {tag}" if tag else ""
            for curves, style, name in ((a, "-", names[0]), (b, "--", names[1])):
                steps, values = zip(*curves[(tag, metric)])
                ax.plot(steps, values, style, color=colours[tag], label=f"{name}{label}", marker=".", ms=3)
        ax.set_xlabel("training step")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(metric.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(f"A: {names[0]} (solid) vs B: {names[1]} (dashed)")
    fig.tight_layout()
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format=fmt, dpi=200)
    plt.close(fig)
    return path


def compare_runs(run_a: str | os.PathLike, run_b: str | os.PathLike, *, metrics: Sequence[str] | None = None,
                 figure: str | os.PathLike | None = None) -> tuple[str, Path | None]:
    """(table text, figure path or ``None``) comparing two run folders' metrics."""
    a, b = load_curves(run_a, "RUN_A"), load_curves(run_b, "RUN_B")
    keys = _shared_keys(a, b, metrics)
    names = (str(run_a), str(run_b))
    if figure is not None and (Path(figure).suffix.lower() not in (".png", ".svg", ".pdf")
                               or Path(figure).is_dir()):
        raise ConfigError(f"--figure {figure}: give a .png, .svg or .pdf file name")
    text = compare_table(a, b, keys, names)
    return text, (plot_comparison(a, b, keys, names, figure) if figure is not None else None)
