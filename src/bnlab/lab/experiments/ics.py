"""Experiment ``ics``: does BN reduce internal covariate shift? (and "noisy BN")

Ioffe & Szegedy (2015, Sections 1–2) motivate BN as reducing internal covariate shift
(ICS). Santurkar, Tsipras, Ilyas & Madry (2018) dispute it: (Section 2.1) a BN network
with random, time-varying noise injected after every BN layer ("noisy BN",
:mod:`bnlab.lab.models.noisy`) trains about as well as plain BN despite a severe, deliberate
distribution shift; (Section 2.2) measured as a change of each layer's gradient when the
layers before it take their update (:func:`bnlab.lab.measure.internal_covariate_shift`),
ICS is *not* lower with BN. This experiment trains a small VGG-style network without BN,
with BN and with noisy BN (plain SGD, so ``W^{t+1} = W^t − η G`` exactly) and measures the
ICS of every conv/FC layer every K steps on the next step's minibatch.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bnlab
from torch import nn
from torch.nn import functional as F

from ..claims_common import kaiming_init, load_data, pyplot, save_figure, seeded
from ..config import check
from ..data import BatchLoader
from ..measure import internal_covariate_shift, loss_closure, named_params
from ..measure.functional import grads_of
from ..models import SmallVGG
from ..models.noisy import NoisyBatchNorm2d, hold_noise, resample_noise
from ..report import Check, Section, Table, render_markdown
from ..train import LoopConfig, fit
from . import Experiment

NETWORKS = {"no-BN": None, "BN": bnlab.BatchNorm2d, "noisy BN": NoisyBatchNorm2d}


@dataclass(frozen=True)
class IcsConfig:
    dataset: str = "mnist-embedded"
    data_dir: str = ""
    steps: int = 400
    batch_size: int = 64
    lr: float = 0.05
    measure_every: int = 25
    widths: tuple[int, ...] = (8, 16)
    ckpt_every: int = 200
    train_limit: int = 0
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr must be positive")
        check(self.measure_every >= 1, "measure_every must be >= 1")


PRESETS = {
    "quick": IcsConfig(steps=600, measure_every=50, ckpt_every=200),  # Kaiming init (claims_common)
    "tiny": IcsConfig(steps=20, measure_every=10, widths=(4, 8), batch_size=32, train_limit=500, ckpt_every=0),
    # Santurkar et al.: VGG on CIFAR-10, SGD (their Fig. 2 / Fig. 3 settings: lr 0.1)
    "paper": IcsConfig(dataset="cifar10", steps=15000, batch_size=128, lr=0.1, measure_every=200,
                       widths=(64, 128, 256), ckpt_every=1000, seeds=(0, 1, 2)),
}


def layer_names(model: nn.Module) -> list[str]:
    """The weight of every conv and linear layer, in data-flow order."""
    return [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _measurer(train, cfg: IcsConfig, seed: int):
    loader = BatchLoader(*train, batch_size=cfg.batch_size, seed=seed)  # the batches fit() uses

    def on_eval(model, step: int) -> dict[str, Any]:
        xb, yb = loader.batch(step)
        params = named_params(model)
        with hold_noise(model):
            resample_noise(model)                       # this step's noise (noisy BN only)
            loss_at = loss_closure(model, F.cross_entropy, xb, yb)
            _, g = grads_of(loss_at, params)
            nxt = {n: params[n] - cfg.lr * g[n] for n in params}   # plain SGD: W^{t+1} = W^t − ηG
            resample_noise(model)                       # the next step's noise: what layer i will see
            loss_next = loss_closure(model, F.cross_entropy, xb, yb)
            points = internal_covariate_shift(loss_at, params, nxt, layer_names(model), loss_next)
        return {"ics": [p.as_dict() for p in points]}

    return on_eval


def run(cfg: IcsConfig, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    out_dir = Path(out_dir)
    train, test = load_data(cfg.dataset, cfg.data_dir or None, bool(cfg.data_dir), cfg.train_limit)
    in_ch = train[0].shape[1]
    runs: dict[str, list[dict]] = {}
    for net, norm in NETWORKS.items():
        for seed in cfg.seeds:
            model = seeded(seed, lambda: kaiming_init(SmallVGG(norm, in_channels=in_ch, widths=cfg.widths)))
            loop = LoopConfig(optimizer="sgd", lr=cfg.lr, momentum=0.0, steps=cfg.steps, batch_size=cfg.batch_size,
                              eval_every=cfg.measure_every, ckpt_every=cfg.ckpt_every, seed=seed)
            runs.setdefault(net, []).append(
                fit(model, train, test, loop, out_dir, tag=f"{net}/seed{seed}", resume=resume,
                    on_eval=_measurer(train, cfg, seed), desc=f"ics {net} s{seed}", meta={"net": net}))
    summary = {net: _summary(rs) for net, rs in runs.items()}
    _plot_accuracy(runs, out_dir / "ics_accuracy.png")
    _plot_ics(runs, out_dir / "ics_layers.png")
    return {"seeds": list(cfg.seeds), "summary": summary, "runs": runs}


def _summary(results: list[dict]) -> dict[str, Any]:
    """Per layer medians over measurements (all seeds) of ‖G − G'‖ and cos(G, G')."""
    per_layer: dict[str, dict[str, list[float]]] = {}
    for res in results:
        for rec in res["history"]:
            for p in rec["ics"]:
                d = per_layer.setdefault(p["layer"], {"l2": [], "cosine": []})
                d["l2"].append(math.inf if p["l2"] is None else p["l2"])
                d["cosine"].append(math.nan if p["cosine"] is None else p["cosine"])
    layers = {k: {"median_l2": statistics.median(v["l2"]), "median_cosine": statistics.median(v["cosine"])}
              for k, v in per_layer.items()}
    deep = [v["median_cosine"] for k, v in list(layers.items())[1:]]  # layer 1 has G' = G
    return {
        "layers": layers,
        "mean_cosine": sum(deep) / len(deep) if deep else math.nan,
        "final_test_acc": [r["final_test_acc"] for r in results],
        "best_test_acc": [r["best_test_acc"] for r in results],
        "status": [r["status"] for r in results],
    }


def _plot_accuracy(runs, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (net, results) in enumerate(runs.items()):
        for j, res in enumerate(results):
            h = res["history"]
            ax.plot([r["step"] for r in h], [100 * r["test_acc"] for r in h], color=f"C{i}",
                    lw=1.6 if j == 0 else 0.8, label=net if j == 0 else None)
    ax.set(xlabel="training step", ylabel="test accuracy (%)",
           title="Noisy BN trains like BN (Santurkar et al. Fig. 2)")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def _plot_ics(runs, path: Path) -> None:
    plt = pyplot()
    first = next(iter(runs.values()))[0]["history"]
    layers = [p["layer"] for p in first[0]["ics"]] if first else []
    fig, axes = plt.subplots(2, max(1, len(layers)), figsize=(2.6 * max(1, len(layers)), 5.2), squeeze=False)
    for i, (net, results) in enumerate(runs.items()):
        h = results[0]["history"]
        steps = [r["step"] for r in h]
        for k, layer in enumerate(layers):
            for row, key in enumerate(("l2", "cosine")):
                ys = [math.nan if r["ics"][k][key] is None else r["ics"][k][key] for r in h]
                axes[row][k].plot(steps, ys, color=f"C{i}", label=net, lw=1.2)
    for k, layer in enumerate(layers):
        axes[0][k].set_title(f"layer {k + 1}: {layer.replace('.weight', '')}", fontsize=8)
        axes[0][k].set_yscale("log")
        axes[1][k].set_xlabel("training step")
    axes[0][0].set_ylabel("‖G − G′‖₂")
    axes[1][0].set_ylabel("cos(G, G′)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Internal covariate shift per layer (Santurkar et al. Def. 2.1); seed 0", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def report_section(results: dict[str, Any], run_dir: Path) -> Section:
    from ..claims_common import fmt_mean_spread, mean_spread

    s = results["summary"]
    rows = tuple((net, fmt_mean_spread(d["best_test_acc"]), f"{d['mean_cosine']:.3f}",
                  "; ".join(f"{v['median_l2']:.2g}" for v in d["layers"].values()),
                  ", ".join(sorted(set(d["status"])))) for net, d in s.items())

    def acc(net):
        return mean_spread(s[net]["best_test_acc"])[0]

    checks = (
        Check("noisy BN trains about as well as BN (best accuracy within 2 points)",
              acc("noisy BN") >= acc("BN") - 0.02, f"{100 * acc('noisy BN'):.1f}% vs {100 * acc('BN'):.1f}%"),
        Check("noisy BN still beats the network without BN", acc("noisy BN") > acc("no-BN"),
              f"{100 * acc('noisy BN'):.1f}% vs {100 * acc('no-BN'):.1f}%"),
        Check("BN does not reduce ICS: mean cos(G, G′) over layers 2.. is not higher with BN than without",
              s["BN"]["mean_cosine"] <= s["no-BN"]["mean_cosine"] + 0.01,
              f"BN {s['BN']['mean_cosine']:.3f} vs no-BN {s['no-BN']['mean_cosine']:.3f}"),
        Check("noisy BN has more ICS than BN (lower mean cos(G, G′))",
              s["noisy BN"]["mean_cosine"] < s["BN"]["mean_cosine"],
              f"noisy {s['noisy BN']['mean_cosine']:.3f} vs BN {s['BN']['mean_cosine']:.3f}"),
    )
    return Section(
        key="ics", title="Internal covariate shift and noisy BN (Santurkar et al. 2018)",
        claim="Ioffe & Szegedy: BN works by reducing internal covariate shift. Santurkar et al. (tested here): "
              "it does not — a BN network with injected distribution shift trains as well, and measured ICS is "
              "not lower with BN.",
        source="Ioffe & Szegedy (2015) Sec. 1–2; Santurkar et al. (2018) Sec. 2.1–2.2, Figures 2–3",
        published=(Table(("network (VGG, CIFAR-10)", "test accuracy", "ICS vs standard"),
                         (("standard", "lower", "—"), ("BN", "higher", "similar or larger"),
                          ("noisy BN", "≈ BN", "larger (visibly unstable distributions)")),
                         caption="Santurkar et al. Figures 2 and 3 (qualitative)"),),
        ours=(Table(("network", "best test accuracy %", "mean cos(G,G′), layers 2..", "median ‖G−G′‖ per layer",
                     "status"), rows, caption=f"seeds {results['seeds']}"),),
        figures=tuple(p for p in (Path(run_dir) / "ics_accuracy.png", Path(run_dir) / "ics_layers.png")
                      if p.exists()),
        checks=checks,
        deviations=("Small VGG-style CNN on MNIST instead of VGG on CIFAR-10 (paper preset: CIFAR-10).",
                    "Plain SGD (no momentum), so W^{t+1} = W^t − ηG exactly; G′ is taken with the next step's "
                    "noise draw for noisy BN.",
                    "ICS is measured on the next training minibatch every K steps, not every step."),
        run_dir=str(run_dir),
    )


def summarize(results: dict[str, Any], run_dir: Path) -> str:
    return render_markdown([report_section(results, run_dir)])


EXPERIMENT = Experiment(
    name="ics",
    claim="BN reduces internal covariate shift (Ioffe & Szegedy) — disputed by Santurkar et al. (2018)",
    config_cls=IcsConfig, presets=PRESETS, run=run, summarize=summarize, order=40,
    figures=("ics_accuracy.png", "ics_layers.png"),
)
