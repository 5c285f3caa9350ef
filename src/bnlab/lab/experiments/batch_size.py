"""Experiment ``batch-size``: BN degrades with small batches; batch-independent norms do not.

Wu & He (2018), "Group Normalization", Figure 1 / Table 3: ResNet-50 on ImageNet trained
with 32, 16, 8, 4 and 2 images per GPU: BN's error rises from 23.6 % to 34.7 % while
GroupNorm stays at 24.1 %. Batch Renorm (Ioffe 2017) and Ghost BN (Hoffer et al. 2017)
are the BN-side answers. Here a small CNN is trained with BN, Batch Renorm, Ghost BN,
GroupNorm and LayerNorm for a fixed number of epochs at each per-batch size, the learning
rate scaled linearly with the batch (Goyal et al. 2017), and evaluated in eval mode.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bnlab
from torch import nn

from ..claims_common import fmt_mean_spread, load_data, mean_spread, pyplot, save_figure, seeded, small_cnn
from ..config import check
from ..report import Check, Section, Table, render_markdown
from ..train import LoopConfig, fit
from . import Experiment

NORMS = ("batch", "renorm", "ghost", "group", "layer")
LABELS = {"batch": "BN", "renorm": "Batch Renorm", "ghost": "Ghost BN (16)", "group": "GroupNorm",
          "layer": "LayerNorm"}

# Wu & He (2018) Table 3, ResNet-50 ImageNet top-1 error (%) by images per GPU, as quoted in the issue
PUBLISHED = (("BN", "23.6", "24.8", "27.3", "34.7"), ("GN", "24.1", "—", "—", "24.1"))


@dataclass(frozen=True)
class BatchSizeConfig:
    dataset: str = "mnist-embedded"
    data_dir: str = ""
    batch_sizes: tuple[int, ...] = (2, 4, 8, 16, 32, 128)
    norms: tuple[str, ...] = NORMS
    epochs: int = 2
    lr_at_32: float = 0.02       # lr = lr_at_32 · B / 32 (linear scaling)
    momentum: float = 0.9
    ghost_batch: int = 16
    widths: tuple[int, ...] = (8, 16)
    hidden: int = 64
    train_limit: int = 0
    ckpt_every: int = 1000
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        check(all(n in NORMS for n in self.norms), f"norms must be among {NORMS}")
        check(min(self.batch_sizes) >= 2, "batch sizes must be >= 2 (BN needs two samples)")
        check(self.epochs >= 1, "epochs must be >= 1")


PRESETS = {
    "quick": BatchSizeConfig(batch_sizes=(2, 4, 8, 32, 128), epochs=2, train_limit=2000),
    "tiny": BatchSizeConfig(batch_sizes=(2, 32), norms=("batch", "group"), epochs=1, train_limit=128,
                            widths=(4, 8), hidden=16, ckpt_every=0),
    # GN paper protocol is ResNet-50/ImageNet; stand-in: CIFAR-10, 10 epochs, three seeds
    "paper": BatchSizeConfig(dataset="cifar10", epochs=10, widths=(32, 64), hidden=256, seeds=(0, 1, 2),
                             lr_at_32=0.02),
}


def _norm(name: str, cfg: BatchSizeConfig, steps: int):
    if name == "renorm":
        # the paper's schedule (BN for 5k steps, r_max at 40k, d_max at 25k) in proportion to
        # this run's length: 5%, 40% and 25% of its steps
        return bnlab.get_norm_layer("renorm", warmup_steps=steps // 20, r_max_steps=max(1, int(0.4 * steps)),
                                    d_max_steps=max(1, int(0.25 * steps)))
    if name == "ghost":
        return bnlab.get_norm_layer("ghost", virtual_batch_size=cfg.ghost_batch)
    if name == "group":
        # 16 channels per group: these layers are narrow (16-64 channels) and the hidden one is
        # 1×1, where the default G = 32 would normalize groups of 1-2 values and erase them
        return lambda c: nn.GroupNorm(max(1, c // 16), c)
    return bnlab.get_norm_layer(name)


def run(cfg: BatchSizeConfig, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    out_dir = Path(out_dir)
    train, test = load_data(cfg.dataset, cfg.data_dir or None, bool(cfg.data_dir), cfg.train_limit)
    in_shape = tuple(train[0].shape[1:])
    acc: dict[str, dict[str, list]] = {}
    status: dict[str, dict[str, list]] = {}
    for name in cfg.norms:
        for bs in cfg.batch_sizes:
            for seed in cfg.seeds:
                steps = cfg.epochs * (len(train[0]) // bs)
                model = seeded(seed, lambda: small_cnn(_norm(name, cfg, steps), "relu", 0.0, cfg.widths, cfg.hidden,
                                                       in_shape))
                loop = LoopConfig(optimizer="sgd", lr=cfg.lr_at_32 * bs / 32, momentum=cfg.momentum, steps=steps,
                                  batch_size=bs, eval_every=steps, ckpt_every=cfg.ckpt_every, seed=seed)
                res = fit(model, train, test, loop, out_dir, tag=f"{name}/b{bs}/seed{seed}", resume=resume,
                          desc=f"{LABELS[name]} B={bs} s{seed}", meta={"norm": name})
                acc.setdefault(name, {}).setdefault(str(bs), []).append(res["final_test_acc"])
                status.setdefault(name, {}).setdefault(str(bs), []).append(res["status"])
    _plot(cfg, acc, out_dir / "batch_size.png")
    return {"seeds": list(cfg.seeds), "batch_sizes": list(cfg.batch_sizes), "final_test_acc": acc, "status": status}


def _plot(cfg: BatchSizeConfig, acc, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (name, by_bs) in enumerate(acc.items()):
        xs = list(cfg.batch_sizes)
        stats = [mean_spread(by_bs[str(b)]) for b in xs]
        err = [100 * (1 - m) for m, _, _ in stats]
        ax.errorbar(xs, err, yerr=[100 * s if s == s else 0 for _, s, _ in stats], marker="o", capsize=3,
                    color=f"C{i}", label=LABELS[name])
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(cfg.batch_sizes), [str(b) for b in cfg.batch_sizes])
    ax.set(xlabel="images per batch", ylabel="test error (%)",
           title=f"Small batches hurt BN, not GN/LN (Wu & He Fig. 1); {cfg.epochs} epochs")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def report_section(results: dict[str, Any], run_dir: Path) -> Section:
    acc, bss = results["final_test_acc"], [str(b) for b in results["batch_sizes"]]
    small, ref = bss[0], ("32" if "32" in bss else bss[-1])
    rows = tuple((LABELS[n], *(fmt_mean_spread([None if a is None else 1 - a for a in acc[n][b]]) for b in bss))
                 for n in acc)

    def m(n, b):
        return mean_spread(acc[n][b])[0] if n in acc else float("nan")

    checks = []
    if "batch" in acc:
        drop_bn = m("batch", ref) - m("batch", small)
        checks.append(Check(f"BN's accuracy drops by more than 1 point from batch {ref} to batch {small}",
                            drop_bn > 0.01, f"{100 * m('batch', ref):.1f}% → {100 * m('batch', small):.1f}%"))
        for n in ("group", "layer", "renorm"):
            if n in acc:
                checks.append(Check(f"at batch {small}, {LABELS[n]} beats BN", m(n, small) > m("batch", small),
                                    f"{100 * m(n, small):.1f}% vs {100 * m('batch', small):.1f}%"))
        if "group" in acc:
            drop_gn = m("group", ref) - m("group", small)
            checks.append(Check(f"GroupNorm's drop from batch {ref} to {small} is smaller than BN's",
                                drop_gn < drop_bn, f"{100 * drop_gn:.1f} vs {100 * drop_bn:.1f} points"))
    return Section(
        key="batch-size", title="Small batches: BN vs Batch Renorm, Ghost BN, GroupNorm, LayerNorm",
        claim="BN's accuracy degrades as the per-batch size shrinks (its statistics get noisy and differ from the "
              "population's); GroupNorm/LayerNorm are independent of the batch and Batch Renorm reduces the gap.",
        source="Wu & He (2018) Fig. 1 / Table 3; Ioffe (2017); Hoffer, Hubara & Soudry (2017)",
        published=(Table(("norm", "32", "8", "4", "2"), PUBLISHED,
                         caption="ResNet-50 on ImageNet, top-1 error % by images per GPU (Wu & He 2018)"),),
        ours=(Table(("norm", *bss), rows,
                    caption=f"test error % by images per batch; seeds {results['seeds']} (mean ± half-range)"),),
        figures=tuple(p for p in [Path(run_dir) / "batch_size.png"] if p.exists()),
        checks=tuple(checks),
        deviations=("A small CNN on MNIST for a fixed number of epochs instead of ResNet-50 on ImageNet.",
                    "One process: the batch is the per-GPU batch of the paper; lr scaled linearly from batch 32.",
                    "Ghost BN uses ghost batches of 16 (equal to BN at batches ≤ 16).",
                    "GroupNorm with 16 channels per group (the paper: G = 32 groups), the layers being narrow.",
                    "Batch Renorm's schedule scaled to each run: plain BN for 5% of the steps, r_max = 3 at 40%, "
                    "d_max = 5 at 25% (the paper: 5k / 40k / 25k steps)."),
        run_dir=str(run_dir),
    )


def summarize(results: dict[str, Any], run_dir: Path) -> str:
    return render_markdown([report_section(results, run_dir)])


EXPERIMENT = Experiment(
    name="batch-size",
    claim="BN degrades with small batches; GroupNorm/LayerNorm do not, Batch Renorm helps (Wu & He 2018)",
    config_cls=BatchSizeConfig, presets=PRESETS, run=run, summarize=summarize, order=50,
    figures=("batch_size.png",),
)
