"""Figure helpers shared by the experiments (matplotlib, headless, written atomically).

Every figure a person looks at has labelled axes, a legend and a title naming the claim
it tests (DESIGN.md, "Outputs a person looks at").
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..runs.runfiles import atomic_write

__all__ = ["pyplot", "save_figure", "percentile_band", "COLORS"]

#: one colour per network, the same in every figure: with BN blue, without BN orange
COLORS = {"bn": "tab:blue", "plain": "tab:orange"}


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    plt = pyplot()
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi,
                                                        bbox_inches="tight"), mode="wb")
    finally:
        plt.close(fig)


def percentile_band(ax, steps: Sequence[int], low: Sequence[float], mid: Sequence[float],
                    high: Sequence[float], color: str, label: str = "") -> None:
    """The paper's Fig. 1(b, c) style: median line, 15th/85th percentile lines and band."""
    ax.fill_between(steps, low, high, color=color, alpha=0.15, linewidth=0)
    ax.plot(steps, high, color=color, linewidth=1.0, linestyle="--", label="85th percentile")
    ax.plot(steps, mid, color=color, linewidth=1.8, label="median (50th)")
    ax.plot(steps, low, color=color, linewidth=1.0, linestyle=":", label="15th percentile")
    if label:
        ax.set_title(label)
