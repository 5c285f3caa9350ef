"""The figures of ``fig1``: (a) test accuracy, (b, c) one unit's percentiles, (d) drift of every unit."""
from __future__ import annotations

from pathlib import Path

import torch

from ..report.figures import color_name, legend_below, mean_band, new_figure, save_figure, style

NETS = (("plain", "without BN"), ("bn", "with BN"))


def draw(cfg, results, out_dir: Path) -> list[dict[str, str]]:
    return [_accuracy(cfg, results, out_dir), _unit(cfg, results, out_dir), _drift(cfg, results, out_dir)]


def _accuracy(cfg, results, out_dir: Path) -> dict[str, str]:
    fig, axes = new_figure(width=6.4, height=4.4)
    ax = axes[0][0]
    lows = []
    for i, (name, label) in enumerate(NETS):
        runs = [r for r in results.series(name, "test_acc") if r]
        if not runs:
            continue
        steps = results.series(name, "step")[0]
        mean_band(ax, steps, runs, label, i)
        lows.append(min(min(r) for r in runs))
    ax.set_xlabel("training step")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(max(0.0, min(lows + [70.0]) - 2), 100)
    ax.grid(alpha=0.3)
    ax.set_title(f"Fig. 1(a): test accuracy with and without BN\n{cfg.dataset}, batch {cfg.batch_size}, "
                 f"SGD lr {cfg.lr:g}, init std {cfg.init_std:g}", fontsize=10)
    legend_below(fig, note=f"line: mean over {len(cfg.seeds)} seeds; band: 95% interval")
    return save_figure(fig, out_dir, "fig1_a_test_accuracy.png",
                       "Test accuracy over training (mean of the seeds, band = 95% interval). The claim "
                       "holds where the BN curve lies above the other and rises earlier.")


def _unit(cfg, results, out_dir: Path) -> dict[str, str]:
    fig, axes = new_figure(1, 2, width=10, height=4.2, sharey=True)
    for ax, (i, (name, label)), letter in zip(axes[0], enumerate(NETS), "bc"):
        s = results.runs[name][0].series
        steps = s["step"]
        p15, p50, p85 = ([row[0] for row in s[f"p{k}"]] for k in (15, 50, 85))
        color = style(i)["color"]
        ax.fill_between(steps, p15, p85, color=color, alpha=0.15, linewidth=0)
        ax.plot(steps, p85, color=color, linestyle="--", linewidth=1.1, label="85th percentile")
        ax.plot(steps, p50, color=color, linestyle="-", linewidth=1.9, label="median (50th)")
        ax.plot(steps, p15, color=color, linestyle=":", linewidth=1.3, label="15th percentile")
        ax.set_title(f"({letter}) {label}", fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("input to sigmoid unit 0, last hidden layer")
    fig.suptitle("Fig. 1(b, c): one sigmoid's input distribution over training (seed "
                 f"{results.seeds['plain'][0]}, fixed probe batch)", fontsize=10)
    colours = ", ".join(f"{color_name(i)}: {label}" for i, (_, label) in enumerate(NETS))
    legend_below(fig, axes=axes[0][:1], ncol=3, note=f"colour = network ({colours}); line style = percentile")
    return save_figure(fig, out_dir, "fig1_bc_sigmoid_input.png",
                       "The 15th, 50th and 85th percentiles of the input to one sigmoid (unit 0 of the last "
                       "hidden layer) on a fixed probe batch. The claim: flat bands with BN (c), bands that "
                       "move and widen without BN (b).")


def _drift(cfg, results, out_dir: Path) -> dict[str, str]:
    """Per-unit drift |p(end) − p(first)|, averaged over the three percentiles, every unit and seed."""
    fig, axes = new_figure(width=6.4, height=4.4)
    ax = axes[0][0]
    data, labels = [], []
    for name, label in NETS:
        per_unit = []
        for run in results.runs[name]:
            s = run.series
            if not s.get("step"):
                continue
            d = torch.stack([(torch.tensor(s[f"p{k}"][-1]) - torch.tensor(s[f"p{k}"][0])).abs()
                             for k in (15, 50, 85)]).mean(0)      # (units,)
            per_unit.extend(d.tolist())
        data.append(per_unit or [float("nan")])
        labels.append(label)
    parts = ax.boxplot(data, tick_labels=labels, patch_artist=True, widths=0.5, showfliers=True,
                       medianprops={"color": "black", "linewidth": 1.6})
    for i, box in enumerate(parts["boxes"]):
        box.set_facecolor(style(i)["color"])
        box.set_alpha(0.45)
    ax.set_yscale("log")
    ax.set_ylabel("drift of a unit's sigmoid input\n(mean |Δ percentile|, first → last evaluation)")
    ax.grid(alpha=0.3, axis="y")
    n_units = len(data[0]) // max(1, len(cfg.seeds))
    ax.set_title(f"Stability half of Fig. 1: drift of every unit ({n_units} units × {len(cfg.seeds)} seeds)",
                 fontsize=10)
    return save_figure(fig, out_dir, "fig1_d_drift_all_units.png",
                       "How far each unit's sigmoid-input percentiles moved between the first and the last "
                       "evaluation (log scale; box = quartiles, black line = median, whiskers 1.5 IQR). "
                       "The claim: the BN box lies lower.")
