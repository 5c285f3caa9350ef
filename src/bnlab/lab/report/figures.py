"""The one figure helper of the lab (matplotlib, headless, written atomically).

Conventions every figure follows: labelled axes with units, a title naming the claim, a
legend that holds every curve and sits *outside* the data (below the axes), a caption that
says what to see, accuracy in percent, and PNGs at 200 dpi so they are crisp on 2× screens.
Arms keep one colour *and* one line style across every figure of an experiment, so a curve
hidden under another is still told apart where they part.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

from ..runs.runfiles import atomic_write
from .verdict import mean_ci

__all__ = ["pyplot", "new_figure", "layout_problems", "style", "color_name", "mean_band", "legend_below",
           "save_figure", "DPI", "PALETTE"]

DPI = 200
#: Okabe & Ito's colour-blind-safe palette, then matplotlib's tab10
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000", "#F0E442",
           "tab:brown", "tab:gray")
#: names of the palette's colours, for captions and legend notes
COLOR_NAMES = ("blue", "orange", "green", "pink", "red", "sky blue", "black", "yellow", "brown", "grey")
_LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def style(i: int) -> dict[str, Any]:
    """Colour, line style and marker of the ``i``-th arm (the same in every figure)."""
    return {"color": PALETTE[i % len(PALETTE)], "linestyle": _LINESTYLES[i % len(_LINESTYLES)],
            "marker": _MARKERS[i % len(_MARKERS)]}


def color_name(i: int) -> str:
    """The name of the ``i``-th arm's colour ("blue", "orange", ...), for notes and captions."""
    return COLOR_NAMES[i % len(COLOR_NAMES)]


def mean_band(ax, x: Sequence[float], per_seed: Sequence[Sequence[float]], label: str, i: int,
              markevery: int | None = None) -> None:
    """Mean over seeds as a line, its 95% t-interval as a band (``per_seed[s][j]`` at ``x[j]``)."""
    st = style(i)
    cols = list(zip(*per_seed)) if per_seed else []
    cis = [mean_ci(c) for c in cols]
    mean = [c.estimate for c in cis]
    lo = [c.low if math.isfinite(c.low) else c.estimate for c in cis]
    hi = [c.high if math.isfinite(c.high) else c.estimate for c in cis]
    n = len(x)
    ax.fill_between(x, lo, hi, color=st["color"], alpha=0.18, linewidth=0)
    ax.plot(x, mean, color=st["color"], linestyle=st["linestyle"], linewidth=1.8, marker=st["marker"],
            markersize=4, markevery=markevery or max(1, n // 8), label=label)


def legend_below(fig, axes=None, ncol: int | None = None, note: str = "") -> None:
    """One legend for the whole figure, centred below the axes (it never covers data).

    ``note`` (e.g. "bands: 95% interval over 3 seeds") is added as the legend's title.
    """
    axes = list(axes if axes is not None else fig.axes)
    handles, labels, seen = [], [], set()
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab and lab not in seen and not lab.startswith("_"):
                seen.add(lab)
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol or min(4, len(labels)),
                   frameon=False, fontsize=8.5, title=note or None, title_fontsize=8.5)


def _confined(out_dir: Path, name: str) -> Path:
    if Path(name).name != name or name.startswith(".") or not name.endswith(".png"):
        raise ValueError(f"figure name must be a plain *.png file name, got {name!r}")
    return Path(out_dir) / name


def layout_problems(fig) -> list[str]:
    """What breaks the conventions: a legend over an axes, a labelled curve missing from every legend.

    Called by :func:`save_figure`, which refuses to write a figure with problems.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    problems = []
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for i, ax in enumerate(fig.axes):
            if box.overlaps(ax.get_window_extent(renderer)):
                problems.append(f"a legend overlaps axes {i} ({ax.get_title()[:40]!r}); use legend_below")
    in_legend = {t.get_text() for leg in legends for t in leg.get_texts()}
    for ax in fig.axes:
        for artist in [*ax.lines, *ax.collections, *ax.patches]:
            label = artist.get_label()
            if label and not label.startswith("_") and legends and label not in in_legend:
                problems.append(f"curve {label!r} is not in the legend")
    return problems


def save_figure(fig, out_dir: str | os.PathLike, name: str, caption: str) -> dict[str, str]:
    """Save ``fig`` as ``out_dir/name`` (PNG, 200 dpi, atomic), close it; its report record.

    Raises ``ValueError`` (and writes nothing) when :func:`layout_problems` finds any, or when
    ``caption`` is empty: every figure says what to see.
    """
    plt = pyplot()
    path = _confined(Path(out_dir), name)
    try:
        problems = layout_problems(fig) + ([] if caption.strip() else ["the caption is empty"])
        if problems:
            raise ValueError(f"figure {name}: " + "; ".join(problems))
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight"), mode="wb")
    finally:
        plt.close(fig)
    return {"file": name, "caption": caption}


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 6.0, height: float = 4.2, **kw):
    """(figure, axes) with constrained layout, so outside legends and titles get room."""
    plt = pyplot()
    return plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", squeeze=False, **kw)
