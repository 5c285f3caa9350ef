"""The speed targets, evaluated on one run's results: each says its goal, what was measured, and met or not."""
from __future__ import annotations

import math

__all__ = ["geomean", "evaluate_targets"]

BIG_BYTES = 3e6          # "shapes >= 3 MB"
HUGE_BYTES = 200e6       # the 205 MB shape, beyond every cache


def geomean(vals) -> float | None:
    vals = [v for v in vals if v and v > 0]
    return math.exp(sum(map(math.log, vals)) / len(vals)) if vals else None


def _target(name, goal, measured, met, detail=""):
    return {"target": name, "goal": goal, "measured": measured, "met": met, "detail": detail}


def _worst(rows, mode):
    if not rows:
        return None, ""
    r = min(rows, key=lambda r: r[mode]["speedup"]["median"])
    low = min(rows, key=lambda r: r[mode]["speedup"]["of_minima"])
    return r[mode]["speedup"]["median"], (f"worst: {r['label']} (bandwidth bound there {r[mode]['bound_speedup']:.2f}x); "
                                          f"by best rounds {low[mode]['speedup']['of_minima']:.2f}x ({low['label']})")


def _layer_targets(rows) -> list[dict]:
    out = []
    plain = [r for r in rows if not r["channels_last"]]
    big = [r for r in plain if r["bytes"] >= BIG_BYTES]
    cl = [r for r in rows if r["channels_last"]]
    for name, subset, mode, goal in (
        ("train fwd+bwd, every NCHW/NCL/2-D shape", plain, "train", 1.2),
        ("train fwd+bwd, NCHW/NCL/2-D shapes >= 3 MB", big, "train", 1.5),
        ("train fwd+bwd, every channels_last shape", cl, "train", 1.0),
        ("eval, every shape", rows, "eval", 1.0),
    ):
        v, where = _worst(subset, mode)
        out.append(_target(name, f">= {goal:.2f}x torch (worst shape)", v, None if v is None else v >= goal,
                           where or "no such shape in this run"))
    for mode, goal in (("train", 1.8), ("eval", 1.4)):
        g = geomean(r[mode]["speedup"]["median"] for r in rows)
        gm = geomean(r[mode]["speedup"]["of_minima"] for r in rows)
        gb = geomean(r[mode]["bound_speedup"] for r in rows)
        out.append(_target(f"{mode} geometric mean over all shapes", f">= {goal:.2f}x torch", g,
                           None if g is None else g >= goal,
                           f"by best rounds {gm:.2f}x; bandwidth bound {gb:.2f}x" if gm else ""))
    huge = [r for r in rows if r["bytes"] >= HUGE_BYTES]
    for r in huge:
        for mode in ("train", "eval"):
            e = r[mode]["peers"]["bnlab"]["efficiency"]
            out.append(_target(f"{mode} at {r['label']} ({r['bytes'] / 1e6:.0f} MB) vs copy bandwidth",
                               ">= 90% of copy bandwidth", e, e >= 0.9,
                               f"best round {r[mode]['peers']['bnlab']['best_gbps']:.1f} GB/s, best copy {r[mode]['best_copy_gbps']:.1f} GB/s"))
    return out


def evaluate_targets(sections: dict) -> list[dict]:
    """Every target whose section ran; ``met`` is None where nothing was measured."""
    out = []
    if "layers" in sections:
        out += _layer_targets(sections["layers"]["rows"])
    pc = sections.get("per_call")
    if pc:
        for mode, goal in (("train", 60.0), ("eval", 15.0)):
            v = pc[mode]["peers"]["bnlab"]["median_us"]
            out.append(_target(f"per call on (4,16,4,4), {mode}", f"<= {goal:.0f} us", v, v <= goal,
                               f"best {pc[mode]['peers']['bnlab']['min_us']:.1f} us; torch "
                               f"{pc[mode]['peers']['torch']['median_us']:.1f} us (best "
                               f"{pc[mode]['peers']['torch']['min_us']:.1f})"))
    fused = sections.get("fused")
    if fused:
        g = geomean(r["train"]["speedup"]["median"] for r in fused["rows"])
        ge = geomean(r["eval"]["speedup"]["median"] for r in fused["rows"])
        out.append(_target("fused BN+ReLU vs torch BN -> ReLU, train fwd+bwd geomean", ">= 2.00x", g,
                           None if g is None else g >= 2.0, f"eval geomean {ge:.2f}x" if ge else ""))
    mem = sections.get("memory")
    if mem:
        v = mem["inplace_vs_torch_chain"]
        out.append(_target("in-place BN+act activation memory saved for backward", "<= 0.50x torch BN -> act", v,
                           v is not None and v <= 0.5, "conv -> norm+act -> conv chain"))
    b1 = sections.get("batch1")
    if b1:
        for n in ("bnlab", "bnlab_act"):
            s = b1["speedup"][n]
            v = 1.0 / s["median"]
            out.append(_target(f"batch-1 latency of a {b1['batchnorm_layers']}-BN net ({n})", "<= 1.00x torch",
                               v, v <= 1.0,
                               f"paired IQR {1.0 / s['p75']:.3f}-{1.0 / s['p25']:.3f}x; BN-free net "
                               f"{1.0 / b1['ceiling']['median']:.3f}x"))
    e2e = sections.get("end_to_end")
    if e2e:
        for n in ("bnlab", "bnlab_act"):
            s = e2e["speedup"][n]
            out.append(_target(f"ResNet-18-style SGD step ({n})", ">= 1.00x torch (never slower)", s["median"],
                               s["median"] >= 1.0,
                               f"paired IQR {s['p25']:.3f}-{s['p75']:.3f}x; ceiling (BN free) {e2e['ceiling']['median']:.3f}x"))
    return out
