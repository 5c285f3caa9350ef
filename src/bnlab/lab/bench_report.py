"""Report of ``bnlab bench``: targets of the speed issue, Markdown table, PNG plot."""
from __future__ import annotations

import math
from pathlib import Path

__all__ = ["targets", "format_table", "plot"]


def _label(shape, cl) -> str:
    return "x".join(map(str, shape)) + (" CL" if cl else "")


def _geomean(vals) -> float | None:
    vals = [v for v in vals if v]
    return math.exp(sum(map(math.log, vals)) / len(vals)) if vals else None


def targets(shapes: list[dict]) -> dict:
    """The issue's targets, measured: fused fwd+bwd and eval speedups, efficiency, memory."""
    def col(mode, peer, key):
        return [s["modes"][mode][peer][key] for s in shapes if mode in s["modes"] and peer in s["modes"][mode]]

    out = {}
    fb = col("fwdbwd", "bnlab", "speedup_vs_aten")
    if fb:
        out["fwdbwd_geomean_speedup"] = _geomean(fb)
        out["fwdbwd_min_speedup"] = min(fb)
    ev = col("eval", "bnlab", "speedup_vs_aten")
    if ev:
        out["eval_geomean_speedup"] = _geomean(ev)
    big = sorted((s for s in shapes if "fwdbwd" in s["modes"] and "bnlab" in s["modes"]["fwdbwd"]),
                 key=lambda s: -s["bytes"])[:4]
    if big:
        out["fwdbwd_efficiency_4_largest"] = [s["modes"]["fwdbwd"]["bnlab"]["efficiency"] for s in big]
    naive = [s["modes"]["fwdbwd"]["naive"]["median_ms"] / s["modes"]["fwdbwd"]["bnlab"]["median_ms"]
             for s in shapes if "fwdbwd" in s["modes"] and {"naive", "bnlab"} <= set(s["modes"]["fwdbwd"])]
    if naive:
        out["fwdbwd_geomean_speedup_vs_naive"] = _geomean(naive)
    if all("bnlab" in s["saved_bytes"] for s in shapes):
        # input bytes + O(C): at most 8 per-channel float64 vectors on top of the input
        out["saved_bytes_within_input_plus_O(C)"] = all(
            s["saved_bytes"]["bnlab"] <= s["bytes"] + 8 * 8 * s["shape"][1] for s in shapes)
    return out


def format_table(results: dict) -> str:
    """Markdown table: one row per shape × mode, median ms (speedup vs ATen) per peer."""
    peers = results["config"]["peers"]
    lines = ["| shape | mode | " + " | ".join(peers) + " | copy GB/s | bnlab eff. |",
             "|" + "---|" * (len(peers) + 4)]
    for s in results["shapes"]:
        for mode, res in s["modes"].items():
            cells = []
            for p in peers:
                r = res.get(p)
                sp = r and r["speedup_vs_aten"]
                cells.append("—" if r is None else f"{r['median_ms']:.3f} ({sp:.2f}×)" if sp else f"{r['median_ms']:.3f}")
            eff = res.get("bnlab", {}).get("efficiency")
            lines.append(f"| {_label(s['shape'], s['channels_last'])} | {mode} | " + " | ".join(cells)
                         + f" | {s['copy_gbps']:.1f} | {'' if eff is None else f'{eff:.0%}'} |")
    lines.append("")
    lines.append("| shape | " + " | ".join(f"saved {p} (MB)" for p in peers) + " | input (MB) |")
    lines.append("|" + "---|" * (len(peers) + 2))
    for s in results["shapes"]:
        lines.append(f"| {_label(s['shape'], s['channels_last'])} | "
                     + " | ".join(f"{s['saved_bytes'].get(p, 0) / 1e6:.2f}" for p in peers)
                     + f" | {s['bytes'] / 1e6:.2f} |")
    for name, res in results.get("end_to_end", {}).items():
        lines.append(f"\n{name} SGD step: torch {res['torch']['median_ms']:.2f} ms, "
                     f"bnlab {res['bnlab']['median_ms']:.2f} ms, speedup {res['speedup']:.2f}×")
    for k, v in results["targets"].items():
        lines.append(f"- {k}: {v if not isinstance(v, float) else round(v, 3)}")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Bar chart: speedup over ATen per shape, one panel per mode, one bar per peer."""
    from .plots import pyplot, save_figure

    plt = pyplot()
    modes = list(results["config"]["modes"])
    peers = [p for p in results["config"]["peers"] if p != "aten"]
    labels = [_label(s["shape"], s["channels_last"]) for s in results["shapes"]]
    fig, axes = plt.subplots(len(modes), 1, figsize=(max(6, 1.3 * len(labels)), 2.8 * len(modes)), squeeze=False)
    width = 0.8 / max(1, len(peers))
    for ax, mode in zip(axes[:, 0], modes):
        for i, p in enumerate(peers):
            vals = [s["modes"][mode].get(p, {}).get("speedup_vs_aten") or 0.0 for s in results["shapes"]]
            ax.bar([j + (i - (len(peers) - 1) / 2) * width for j in range(len(labels))], vals, width, label=p)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_ylabel("speedup over ATen (×)")
        ax.set_title(f"BatchNorm on CPU, {mode}: higher is faster")
        ax.legend(fontsize=7)
    save_figure(fig, path)
