"""The figure of ``bnlab bench``: speedup over torch per shape, train and eval, with paired spread."""
from __future__ import annotations

__all__ = ["speedup_figure"]

YLIM = (0.25, 4.0)       # log scale; a bar beyond the range is clipped at the frame
TICKS = (0.25, 0.5, 1.0, 2.0, 4.0)


def speedup_figure(res: dict):
    """A matplotlib ``Figure``: one panel per mode; bars = median paired ratio, whiskers = IQR, dots = best rounds."""
    from matplotlib.figure import Figure

    s = res["sections"]
    series = []
    if "layers" in s:
        series.append(("bnlab BN vs torch BN (default allocator)", s["layers"]["rows"]))
    if s.get("fixed_malloc", {}).get("rows"):
        series.append(("bnlab BN vs torch BN (fixed mmap threshold)", s["fixed_malloc"]["rows"]))
    if s.get("thp_alloc", {}).get("rows"):
        series.append(("bnlab BN vs torch BN (torch allocator on huge pages)", s["thp_alloc"]["rows"]))
    if "fused" in s:
        series.append(("BatchNormAct(relu) vs torch BN→ReLU", s["fused"]["rows"]))
    labels = [r["label"] for r in series[0][1]] if series else []
    fig = Figure(figsize=(max(7.0, 0.9 * len(labels) + 2), 7.5), layout="constrained")
    axes = fig.subplots(2, 1, squeeze=False)[:, 0]
    width = 0.8 / max(1, len(series))
    for ax, mode in zip(axes, ("train", "eval")):
        for i, (name, rows) in enumerate(series):
            med = [r[mode]["speedup"]["median"] for r in rows]
            err = [[m - r[mode]["speedup"]["p25"] for m, r in zip(med, rows)],
                   [r[mode]["speedup"]["p75"] - m for m, r in zip(med, rows)]]
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(rows))]
            ax.bar(xs, med, width, yerr=err, capsize=2, label=name)
            ax.plot(xs, [r[mode]["speedup"]["of_minima"] for r in rows], "o", ms=3, color="black",
                    label="ratio of the best rounds" if i == 0 else None)
        ax.axhline(1.0, color="black", lw=0.8, label="torch (1×)")
        ax.set_yscale("log")
        ax.set_ylim(*YLIM)
        ax.set_yticks(TICKS, [f"{t:g}×" for t in TICKS])
        ax.minorticks_off()
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("speedup over torch (×, log; higher = faster)")
        what = "training forward + backward" if mode == "train" else "eval forward"
        ax.set_title(f"BatchNorm on CPU, {what}: median of paired rounds, whiskers = 25th–75th percentile")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=3, fontsize=8)
    if res.get("smoke"):
        fig.suptitle("SMOKE RUN — not numbers to cite", color="red")
    elif res.get("machine", {}).get("busy"):
        fig.suptitle("busy machine (load average above the benchmark's own): read with care", color="red")
    return fig
