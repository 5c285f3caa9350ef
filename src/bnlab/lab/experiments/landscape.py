"""Experiment ``landscape``: BN makes the loss landscape and its gradients smoother.

Santurkar, Tsipras, Ilyas & Madry (2018), Section 3.1 and Figure 4: a VGG network with
and without BN is trained with plain SGD; every K steps, moving from the current weights
along the current gradient with step sizes η ∈ [0.5, 4] × lr, they record the range of the
loss (loss landscape), the range of the gradient change ‖∇L(w − ηg) − ∇L(w)‖
(gradient predictiveness) and its maximum over ‖ηg‖ (effective β-smoothness). With BN
all three are much smaller. The measurement is :func:`bnlab.lab.measure.probe_along_gradient`,
taken on the minibatch of the next training step, in training mode.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bnlab
from torch.nn import functional as F

from ..claims_common import kaiming_init, load_data, pyplot, save_figure, seeded
from ..config import check
from ..data import BatchLoader
from ..measure import loss_closure, named_params, probe_along_gradient
from ..models import SmallVGG
from ..report import Check, Section, Table, render_markdown
from ..train import LoopConfig, fit
from . import Experiment

NETWORKS = ("no-BN", "BN")
KEYS = ("loss_min", "loss_max", "grad_change_min", "grad_change_max", "beta", "grad_norm")


@dataclass(frozen=True)
class LandscapeConfig:
    dataset: str = "mnist-embedded"
    data_dir: str = ""
    steps: int = 400
    batch_size: int = 64
    lr: float = 0.1
    probe_every: int = 25
    multipliers: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
    widths: tuple[int, ...] = (8, 16)
    ckpt_every: int = 200
    train_limit: int = 0
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr must be positive")
        check(self.probe_every >= 1, "probe_every must be >= 1")
        check(min(self.multipliers) > 0, "step-size multipliers must be positive")


PRESETS = {
    "quick": LandscapeConfig(steps=400, probe_every=40, ckpt_every=200,
                              multipliers=(0.5, 1.0, 2.0, 3.0, 4.0)),  # Kaiming init (claims_common)
    "tiny": LandscapeConfig(steps=20, probe_every=10, multipliers=(0.5, 2.0, 4.0), train_limit=500,
                            widths=(4, 8), batch_size=32, ckpt_every=0),
    # Santurkar et al.: VGG on CIFAR-10, plain SGD, lr 0.1 (their Fig. 4 also shows 0.5)
    "paper": LandscapeConfig(dataset="cifar10", steps=15000, batch_size=128, lr=0.1, probe_every=100,
                             widths=(64, 128, 256), ckpt_every=1000, seeds=(0, 1, 2)),
}


def _prober(train, cfg: LandscapeConfig, seed: int):
    loader = BatchLoader(*train, batch_size=cfg.batch_size, seed=seed)  # the batches fit() uses

    def on_eval(model, step: int) -> dict[str, Any]:
        xb, yb = loader.batch(step)  # the minibatch of the next training step
        probe = probe_along_gradient(loss_closure(model, F.cross_entropy, xb, yb), named_params(model),
                                     cfg.lr, cfg.multipliers)
        d = probe.as_dict()
        return {f"probe_{k}": d[k] for k in KEYS}

    return on_eval


def run(cfg: LandscapeConfig, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    out_dir = Path(out_dir)
    train, test = load_data(cfg.dataset, cfg.data_dir or None, bool(cfg.data_dir), cfg.train_limit)
    in_ch = train[0].shape[1]
    runs: dict[str, list[dict]] = {}
    for net in NETWORKS:
        for seed in cfg.seeds:
            norm = bnlab.BatchNorm2d if net == "BN" else None
            model = seeded(seed, lambda: kaiming_init(SmallVGG(norm, in_channels=in_ch, widths=cfg.widths)))
            loop = LoopConfig(optimizer="sgd", lr=cfg.lr, momentum=0.0, steps=cfg.steps,
                              batch_size=cfg.batch_size, eval_every=cfg.probe_every,
                              ckpt_every=cfg.ckpt_every, seed=seed)
            runs.setdefault(net, []).append(
                fit(model, train, test, loop, out_dir, tag=f"{net}/seed{seed}", resume=resume,
                    on_eval=_prober(train, cfg, seed), desc=f"landscape {net} s{seed}", meta={"net": net}))
    summary = {net: _summary(rs) for net, rs in runs.items()}
    _plot(runs, out_dir / "landscape.png", cfg)
    return {"seeds": list(cfg.seeds), "summary": summary, "runs": runs}


def _median(values) -> float:
    vals = [v if v is not None else math.inf for v in values]
    return statistics.median(vals) if vals else math.nan


def _summary(results: list[dict]) -> dict[str, Any]:
    """Medians over probes (all seeds) of the three quantities, plus final accuracy per seed."""
    probes = [r for res in results for r in res["history"]]
    width = [(r["probe_loss_max"] - r["probe_loss_min"]) if None not in (r["probe_loss_max"], r["probe_loss_min"])
             else None for r in probes]
    return {
        "median_loss_range": _median(width),
        "median_grad_change_max": _median([r["probe_grad_change_max"] for r in probes]),
        "median_beta": _median([r["probe_beta"] for r in probes]),
        "final_test_acc": [res["final_test_acc"] for res in results],
        "status": [res["status"] for res in results],
    }


def _nan(v):
    return math.nan if v is None else v


def _plot(runs: dict[str, list[dict]], path: Path, cfg: LandscapeConfig) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    bands = (("loss_min", "loss_max", "loss along the gradient", "(a) loss landscape"),
             ("grad_change_min", "grad_change_max", "‖∇L(w−ηg) − ∇L(w)‖", "(b) gradient predictiveness"))
    for i, (net, results) in enumerate(runs.items()):
        for j, res in enumerate(results):
            h = res["history"]
            steps = [r["step"] for r in h]
            label = net if j == 0 else None
            for ax, (lo, hi, ylabel, title) in zip(axes, bands):
                ax.fill_between(steps, [_nan(r[f"probe_{lo}"]) for r in h], [_nan(r[f"probe_{hi}"]) for r in h],
                                color=f"C{i}", alpha=0.35 if j == 0 else 0.15, label=label)
                ax.set(xlabel="training step", ylabel=ylabel, title=title, yscale="log")
            axes[2].plot(steps, [_nan(r["probe_beta"]) for r in h], color=f"C{i}", lw=1.5 if j == 0 else 0.8,
                         label=label)
    axes[2].set(xlabel="training step", ylabel="max ‖Δ∇L‖ / ‖ηg‖", title="(c) effective β-smoothness", yscale="log")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"BN smooths the loss landscape (Santurkar et al. Fig. 4); η ∈ [{min(cfg.multipliers):g}, "
                 f"{max(cfg.multipliers):g}] × lr, lr = {cfg.lr:g}", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def report_section(results: dict[str, Any], run_dir: Path) -> Section:
    s = results["summary"]
    rows = tuple((net, f"{d['median_loss_range']:.3g}", f"{d['median_grad_change_max']:.3g}",
                  f"{d['median_beta']:.3g}", " / ".join(f"{100 * a:.1f}" if a is not None else "—"
                                                         for a in d["final_test_acc"]),
                  ", ".join(sorted(set(d["status"])))) for net, d in s.items())
    checks = []
    for key, what in (("median_loss_range", "the loss range along the gradient"),
                      ("median_grad_change_max", "the gradient change along the gradient"),
                      ("median_beta", "the effective β-smoothness")):
        bn, plain = s["BN"][key], s["no-BN"][key]
        checks.append(Check(f"with BN, {what} is smaller (median over probes)", bn < plain,
                            f"BN {bn:.3g} vs no-BN {plain:.3g}"))
    return Section(
        key="landscape", title="Smoother loss landscape (Santurkar et al. 2018)",
        claim="BN makes the loss and its gradient change less along the gradient direction: a narrower loss "
              "range, more predictive gradients and a smaller effective β-smoothness.",
        source="Santurkar, Tsipras, Ilyas & Madry (2018), Section 3.1, Figure 4",
        published=(Table(("quantity", "VGG on CIFAR-10, no BN → BN"),
                         (("loss landscape", "wide band → much narrower band"),
                          ("gradient predictiveness", "large, erratic changes → small"),
                          ("effective β-smoothness", "markedly lower with BN")),
                         caption="Figure 4 (qualitative: the paper gives plots, not numbers)"),),
        ours=(Table(("network", "median loss range", "median max ‖Δ∇L‖", "median β", "final test acc % (per seed)",
                     "status"), rows, caption=f"seeds {results['seeds']}; medians over every probe"),),
        figures=tuple(p for p in [Path(run_dir) / "landscape.png"] if p.exists()),
        checks=tuple(checks),
        deviations=("A small VGG-style CNN on MNIST instead of VGG on CIFAR-10 (paper preset: CIFAR-10).",
                    "Probes on the minibatch of the next step at the step sizes in config.json "
                    "(multipliers of lr in [0.5, 4]); the paper does not state its grid.",
                    "One learning rate (the paper also shows lr 0.5)."),
        run_dir=str(run_dir),
    )


def summarize(results: dict[str, Any], run_dir: Path) -> str:
    return render_markdown([report_section(results, run_dir)])


EXPERIMENT = Experiment(
    name="landscape",
    claim="BN smooths the loss landscape and makes gradients more predictive (Santurkar et al. 2018)",
    config_cls=LandscapeConfig, presets=PRESETS, run=run, summarize=summarize, order=30,
    figures=("landscape.png",),
)
