"""Experiment ``inference``: the train/eval gap of BN and the paper's Algorithm 2.

Ioffe & Szegedy (2015), Section 3.1 and Algorithm 2: at inference the batch statistics
are replaced by population statistics, E[x] = E_B[μ_B] and Var[x] = m/(m−1)·E_B[σ²_B],
computed with the *final* network. In practice frameworks keep exponential moving
averages during training instead; with a small momentum (PyTorch convention: weight of
the new batch) they lag behind the changing network ("stale" statistics). This experiment
trains one BN network per momentum — the momentum does not touch the weights, so every
run ends with the same weights — and compares test accuracy in eval mode with (a) the
moving averages, (b) statistics recalibrated with :func:`bnlab.recalibrate` (Algorithm 2),
(c) batch statistics of each test batch (training-mode normalization).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bnlab
import torch
from torch import nn

from ..claims_common import load_data, pyplot, save_figure, seeded, small_cnn
from ..config import check
from ..data import BatchLoader
from ..report import Check, Section, Table, render_markdown
from ..train import LoopConfig, evaluate, fit
from . import Experiment

MODES = ("moving average", "recalibrated (Alg. 2)", "batch statistics")


@dataclass(frozen=True)
class InferenceConfig:
    dataset: str = "mnist-embedded"
    data_dir: str = ""
    momenta: tuple[float, ...] = (0.001, 0.01, 0.1, 0.5)
    steps: int = 500
    batch_size: int = 50
    lr: float = 0.05
    recal_batches: int = 80
    widths: tuple[int, ...] = (8, 16)
    hidden: int = 64
    train_limit: int = 0
    ckpt_every: int = 250
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        check(all(0 < m <= 1 for m in self.momenta), "momenta must be in (0, 1]")
        check(self.recal_batches >= 1, "recal_batches must be >= 1")


PRESETS = {
    "quick": InferenceConfig(momenta=(0.001, 0.01, 0.1), steps=300, recal_batches=40, ckpt_every=150),
    "tiny": InferenceConfig(momenta=(0.001, 0.5), steps=30, recal_batches=5, widths=(4, 8), hidden=16,
                            train_limit=500, ckpt_every=0),
    "paper": InferenceConfig(dataset="cifar10", steps=20000, batch_size=64, lr=0.05, widths=(32, 64), hidden=256,
                             recal_batches=200, ckpt_every=2000, momenta=(0.0001, 0.001, 0.01, 0.1, 0.5),
                             seeds=(0, 1, 2)),
}


def _set_momentum(model: nn.Module, momentum: float) -> nn.Module:
    for m in model.modules():
        if isinstance(m, bnlab.BatchNorm2d):
            m.momentum = momentum
    return model


@torch.no_grad()
def batch_stat_accuracy(model: nn.Module, x, y, batch_size: int) -> float:
    """Accuracy when every test batch is normalized with its own statistics (a copy is used).

    The test set is visited in a fixed random order (seed 0): a split stored class by class
    would otherwise give single-class batches, whose statistics are not the population's.
    """
    net = copy.deepcopy(model).train()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    correct = 0
    n = (len(x) // batch_size) * batch_size
    for i in range(0, n, batch_size):
        correct += (net(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    return correct / n


def run(cfg: InferenceConfig, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    out_dir = Path(out_dir)
    train, test = load_data(cfg.dataset, cfg.data_dir or None, bool(cfg.data_dir), cfg.train_limit)
    in_shape = tuple(train[0].shape[1:])
    rows, weight_gap = {}, 0.0
    for seed in cfg.seeds:
        first = None
        for mom in cfg.momenta:
            model = seeded(seed, lambda: _set_momentum(
                small_cnn(bnlab.BatchNorm2d, "relu", 0.0, cfg.widths, cfg.hidden, in_shape), mom))
            loop = LoopConfig(optimizer="sgd", lr=cfg.lr, momentum=0.9, steps=cfg.steps, batch_size=cfg.batch_size,
                              eval_every=cfg.steps, ckpt_every=cfg.ckpt_every, seed=seed)
            fit(model, train, test, loop, out_dir, tag=f"m{mom:g}/seed{seed}", resume=resume,
                desc=f"inference m={mom:g} s{seed}", meta={"bn_momentum": mom})
            weights = torch.cat([p.detach().flatten() for p in model.parameters()])
            first = weights if first is None else first
            weight_gap = max(weight_gap, float((weights - first).abs().max()))
            recal = copy.deepcopy(model).eval()
            loader = BatchLoader(*train, batch_size=cfg.batch_size, seed=10_000 + seed)
            bnlab.recalibrate(recal, (xb for xb, _ in loader.steps()), num_batches=cfg.recal_batches)
            var_gap = max(float(((a.running_var - b.running_var).abs() / b.running_var).max())
                          for a, b in zip(_bns(model), _bns(recal)))
            rows.setdefault(f"{mom:g}", []).append({
                "moving average": evaluate(model, *test)[1],
                "recalibrated (Alg. 2)": evaluate(recal, *test)[1],
                "batch statistics": batch_stat_accuracy(model, *test, cfg.batch_size),
                "max_rel_var_gap": var_gap,
            })
    _plot(cfg, rows, out_dir / "inference.png")
    return {"seeds": list(cfg.seeds), "accuracy": rows, "max_weight_difference_across_momenta": weight_gap}


def _bns(model):
    return [m for m in model.modules() if isinstance(m, bnlab.BatchNorm2d)]


def _mean(vals):
    return sum(vals) / len(vals)


def _plot(cfg, rows, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    moms = list(rows)
    xs = range(len(moms))
    for i, mode in enumerate(MODES):
        ax.bar([x + (i - 1) * 0.27 for x in xs], [100 * _mean([r[mode] for r in rows[m]]) for m in moms],
               width=0.27, label=mode, color=f"C{i}")
    ax.set_xticks(list(xs), [f"momentum {m}" for m in moms])
    ax.set(ylabel="test accuracy (%)", ylim=(0, 100),
           title=f"Eval-mode statistics vs BN momentum after {cfg.steps} steps (Alg. 2)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, path)


def report_section(results: dict[str, Any], run_dir: Path) -> Section:
    acc = results["accuracy"]
    moms = list(acc)
    mean = {m: {k: _mean([r[k] for r in acc[m]]) for k in (*MODES, "max_rel_var_gap")} for m in moms}
    rows = tuple((m, *(f"{100 * mean[m][k]:.1f}" for k in MODES), f"{mean[m]['max_rel_var_gap']:.2f}")
                 for m in moms)
    smallest = min(moms, key=float)
    default = "0.1" if "0.1" in moms else moms[-1]
    rec, mov, bat = (lambda m: mean[m]["recalibrated (Alg. 2)"]), (lambda m: mean[m]["moving average"]), \
        (lambda m: mean[m]["batch statistics"])
    checks = (
        Check(f"the moving average is stale at momentum {smallest}: ≥ 5 points below recalibrated statistics",
              mov(smallest) < rec(smallest) - 0.05, f"{100 * mov(smallest):.1f}% vs {100 * rec(smallest):.1f}%"),
        Check("recalibration (Alg. 2) restores the accuracy: within 1 point of the best mode at every momentum",
              all(rec(m) >= max(mov(m), bat(m)) - 0.01 for m in moms),
              "; ".join(f"{m}: {100 * rec(m):.1f}%" for m in moms)),
        Check(f"at the usual momentum {default}, moving averages are within 1 point of recalibrated statistics",
              abs(mov(default) - rec(default)) <= 0.01, f"{100 * mov(default):.1f}% vs {100 * rec(default):.1f}%"),
    )
    return Section(
        key="inference", title="Inference statistics: moving averages vs Algorithm 2",
        claim="At inference BN must use population statistics of the final network (Alg. 2); moving averages "
              "approximate them and go stale when their momentum is small relative to training length.",
        source="Ioffe & Szegedy (2015), Section 3.1, Algorithm 2",
        published=(Table(("quantity", "paper"), (("E[x]", "E_B[μ_B] over training mini-batches"),
                                                  ("Var[x]", "m/(m−1) · E_B[σ²_B]"),
                                                  ("practice", "moving averages during training (Sec. 3.1)")),
                         caption="Algorithm 2 (no accuracy numbers are published for this)"),),
        ours=(Table(("BN momentum", *(f"{k} %" for k in MODES), "max rel. gap of running var"), rows,
                    caption=f"test accuracy, seeds {results['seeds']}; identical weights across momenta "
                            f"(max difference {results['max_weight_difference_across_momenta']:.1e})"),),
        figures=tuple(p for p in [Path(run_dir) / "inference.png"] if p.exists()),
        checks=checks,
        deviations=("Small CNN on MNIST; recalibration over a fixed number of training batches, not all of them.",),
        run_dir=str(run_dir),
    )


def summarize(results: dict[str, Any], run_dir: Path) -> str:
    return render_markdown([report_section(results, run_dir)])


EXPERIMENT = Experiment(
    name="inference",
    claim="Inference needs population statistics (Alg. 2); moving averages can be stale",
    config_cls=InferenceConfig, presets=PRESETS, run=run, summarize=summarize, order=60,
    figures=("inference.png",),
)
