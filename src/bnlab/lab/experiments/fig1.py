"""Experiment ``fig1``: the paper's Figure 1 — MNIST with and without Batch Normalization.

Ioffe & Szegedy (2015), Sec. 4.1: a 784-100-100-100-10 sigmoid network (weights
N(0, 0.01²)) trained with and without BN on 60-example minibatches. Figure 1 shows
(a) test accuracy vs training step: "the batch-normalized network enjoys the higher
test accuracy"; (b, c) the {15, 50, 85}th percentiles of the input to one typical
sigmoid of the last hidden layer over training: "the distributions in the batch-normalized
network are much more stable as training progresses, which aids the training"; without BN
they "change significantly over time, both in their mean and the variance".

Measurement: every ``eval_every`` steps, the network in training mode (BN normalizes with
the probe's own batch statistics, as it does during training) is run on a fixed probe
batch of ``probe_size`` training images, and the percentiles of the pre-sigmoid values of
unit ``neuron`` of the last hidden layer over the probe are recorded. BN's running
statistics are restored after the probe, so probing does not change training.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import check
from ..models import MnistMLP, norm_factory
from ..plots import COLORS, percentile_band, pyplot, save_figure
from ..train import LoopConfig, fit, steps_to_reach
from ..train_job import load_train_test
from . import Experiment

CLAIM = ("Batch Normalization makes the MNIST sigmoid network reach higher test accuracy "
         "faster, and keeps the distribution of each sigmoid's input stable during training.")
NETWORKS = {"plain": "without BN", "bn": "with BN"}
PERCENTILES = (0.15, 0.50, 0.85)
FIGURES = ("fig1_a_test_accuracy.png", "fig1_bc_sigmoid_input.png")


def _f(default, help):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Fig1Config(LoopConfig):
    """Figure 1 settings; the loop fields come from :class:`~bnlab.lab.train.LoopConfig`."""

    dataset: str = _f("mnist-embedded", "mnist-embedded | mnist (full MNIST)")
    data_dir: str = _f("", "data/cache directory ('' = default, env BNLAB_DATA)")
    download: bool = _f(False, "download missing official files")
    binarize: bool = _f(False, "binary 0/1 pixels, as in the paper's text")
    optimizer: str = _f("sgd", "sgd | adam")
    lr: float = _f(0.5, "learning rate, both networks")
    momentum: float = _f(0.0, "SGD momentum")
    steps: int = _f(10_000, "training steps per network")
    batch_size: int = _f(60, "minibatch size (paper: 60)")
    eval_every: int = _f(100, "evaluate and probe every K steps")
    probe_size: int = _f(1000, "images in the fixed probe batch")
    neuron: int = _f(0, "which sigmoid of the last hidden layer (0..99) is probed")
    targets: tuple[float, ...] = _f((0.8, 0.9, 0.95), "accuracies for steps-to-reach")
    threads: int = _f(1, "torch CPU threads (0 = torch's default); 1 is fastest for this tiny net")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.neuron < 100, f"neuron must be in 0..99, got {self.neuron}")
        check(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
        check(self.probe_size >= 2, f"probe_size must be >= 2, got {self.probe_size}")
        check(all(0 < t <= 1 for t in self.targets), f"targets must be in (0, 1], got {self.targets}")


PRESETS = {
    "quick": Fig1Config(),
    "tiny": Fig1Config(steps=200, eval_every=50, probe_size=200, ckpt_every=100),  # smoke tests
    "paper": Fig1Config(dataset="mnist", binarize=True, steps=50_000, eval_every=500,
                        ckpt_every=5_000),
}


def sigmoid_input_probe(probe: torch.Tensor, neuron: int):
    """``on_eval`` hook: percentiles of the input to sigmoid ``neuron`` of the last hidden layer."""
    q = torch.tensor(PERCENTILES)

    @torch.no_grad()
    def hook(model: MnistMLP, step: int) -> dict[str, float]:
        saved = {k: b.clone() for k, b in model.named_buffers()}  # running stats, counters
        was_training = model.training
        model.train()                                             # batch statistics, as in training
        _, preacts = model.forward_with_preacts(probe)
        model.train(was_training)
        for k, b in model.named_buffers():
            b.copy_(saved[k])
        z = preacts[-1][:, neuron].double()                       # (probe_size,)
        p15, p50, p85 = torch.quantile(z, q.double()).tolist()
        return {"sigmoid_in_p15": p15, "sigmoid_in_p50": p50, "sigmoid_in_p85": p85}

    return hook


def run(cfg: Fig1Config, out_dir: Path, resume: bool = False) -> dict[str, Any]:
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, out_dir, resume)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: Fig1Config, out_dir: Path, resume: bool) -> dict[str, Any]:
    (x_train, y_train), test = load_train_test(cfg.dataset, cfg.data_dir, cfg.download, cfg.binarize)
    g = torch.Generator().manual_seed(cfg.seed + 12345)
    probe = x_train[torch.randperm(len(x_train), generator=g)[:cfg.probe_size]]
    loop = LoopConfig.from_config(cfg)
    networks, histories = {}, {}
    for tag, label in NETWORKS.items():
        torch.manual_seed(cfg.seed)  # same initial W for both networks (BN drops the bias)
        norm = norm_factory("batch" if tag == "bn" else None, 1)
        model = MnistMLP(norm, in_features=x_train[0].numel())
        res = fit(model, (x_train, y_train), test, loop, out_dir, tag=tag, resume=resume,
                  on_eval=sigmoid_input_probe(probe, cfg.neuron),
                  meta={"experiment": "fig1", "network": tag, "dataset": cfg.dataset,
                        "binarize": cfg.binarize, "probe_size": cfg.probe_size,
                        "neuron": cfg.neuron},
                  desc=f"fig1 {label}")
        histories[tag] = res.pop("history")
        res["steps_to_reach"] = {f"{t:g}": steps_to_reach(histories[tag], t) for t in cfg.targets}
        res["final_sigmoid_input_percentiles"] = (
            {k: histories[tag][-1][f"sigmoid_in_p{k}"] for k in ("15", "50", "85")}
            if histories[tag] else None)
        networks[tag] = res
    plot(histories, out_dir, cfg)
    return {"networks": networks, "figures": list(FIGURES)}


def plot(histories: dict[str, list[dict[str, Any]]], out_dir: Path, cfg: Fig1Config) -> None:
    """(a) test accuracy vs step; (b) without BN, (c) with BN: the sigmoid-input percentiles."""
    plt = pyplot()
    data = "binarized " if cfg.binarize else ""
    fig, ax = plt.subplots(figsize=(5.5, 4.2), layout="constrained")
    for tag, label in NETWORKS.items():
        h = histories[tag]
        ax.plot([r["step"] for r in h], [r["test_acc"] for r in h], color=COLORS[tag],
                linewidth=1.8, label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(max(0.0, min([0.7] + [r["test_acc"] for h in histories.values() for r in h])), 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"Fig. 1(a): with BN, higher test accuracy sooner\n"
                 f"{data}{cfg.dataset}, batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr:g}",
                 fontsize=10)
    save_figure(fig, out_dir / FIGURES[0])

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True, layout="constrained")
    for ax, (tag, label), letter in zip(axes, NETWORKS.items(), "bc"):
        h = histories[tag]
        percentile_band(ax, [r["step"] for r in h], [r["sigmoid_in_p15"] for r in h],
                        [r["sigmoid_in_p50"] for r in h], [r["sigmoid_in_p85"] for r in h],
                        COLORS[tag], label=f"({letter}) {label}")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[0].set_ylabel(f"input to sigmoid #{cfg.neuron} of last hidden layer")
    fig.suptitle("Fig. 1(b, c): the input distribution of a sigmoid is stable with BN, "
                 "drifts without it\n{15, 50, 85}th percentiles on a fixed probe batch "
                 "(training mode)", fontsize=10)
    save_figure(fig, out_dir / FIGURES[1])


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def summarize(results: dict[str, Any], run_dir: Path) -> str:
    """Markdown for ``results.md``: accuracy table and the two figures."""
    nets = results["networks"]
    targets = list(next(iter(nets.values()))["steps_to_reach"])
    head = "| network | status | final test acc | best test acc | " + " | ".join(
        f"steps to {float(t) * 100:g}%" for t in targets) + " | sigmoid input p15/p50/p85 (end) |"
    rows = [head, "|" + "---|" * (5 + len(targets))]
    for tag, label in NETWORKS.items():
        r = nets[tag]
        p = r.get("final_sigmoid_input_percentiles")
        pcts = "—" if not p else f"{p['15']:.2f} / {p['50']:.2f} / {p['85']:.2f}"
        rows.append(f"| {label} | {r['status']} | {_pct(r['final_test_acc'])} | "
                    f"{_pct(r['best_test_acc'])} | "
                    + " | ".join(str(r["steps_to_reach"][t] or "never") for t in targets)
                    + f" | {pcts} |")
    figs = "\n".join(f"![{name}]({(Path(run_dir) / name).as_posix()})" for name in results["figures"])
    return "\n".join(rows) + "\n\n" + figs + "\n"


EXPERIMENT = Experiment(name="fig1", claim=CLAIM, config_cls=Fig1Config, presets=PRESETS,
                        run=run, summarize=summarize, order=10, figures=FIGURES)
