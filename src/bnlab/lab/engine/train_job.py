"""``bnlab train``: one model, one dataset, one norm layer, one optimizer — torchrun-ready.

``run_training(TrainConfig(...), out_dir)`` loads the data, builds the model (seeded),
optionally converts its BN layers to SyncBatchNorm, trains it with :func:`~bnlab.lab.engine.train.fit`
and writes ``config.json``, ``metrics.jsonl``, ``checkpoints/model.pt`` and ``results.json``
into ``out_dir``. Launched by ``torchrun --nproc-per-node N -m bnlab train ...`` it joins a
gloo process group and trains data-parallel (DDP); rank 0 writes the files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import bnlab

from . import distributed as D
from ..config import ConfigError, check, config_to_dict, option
from ..data import dataset_info
from ..models import build_model, model_names, norm_names
from ..runs.runfiles import run_metadata, write_json
from .train import LoopConfig, fit

__all__ = ["TrainConfig", "run_training", "load_train_test"]



@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """Settings of ``bnlab train`` (loop fields from :class:`~bnlab.lab.engine.train.LoopConfig`)."""

    model: str = option("mnist-mlp", "mnist-mlp | seed-net | vgg-small | bn-inception")
    dataset: str = option("mnist-embedded", "mnist-embedded | mnist | fashion-mnist | cifar10")
    data_dir: str = option("", "data/cache directory ('' = default, env BNLAB_DATA)")
    download: bool = option(False, "download missing official files")
    binarize: bool = option(False, "binary 0/1 pixels")
    norm: str = option("batch", "norm layer: batch | torch | none | ghost | renorm | ...")
    sync_bn: bool = option(False, "under torchrun: convert BN layers to bnlab.SyncBatchNorm")
    threads: int = option(0, "torch CPU threads per process (0 = torch's default)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.model in model_names(), f"model must be one of {model_names()}, got {self.model!r}")
        check(self.norm in norm_names(), f"norm must be one of {norm_names()}, got {self.norm!r}")
        check(self.threads >= 0, f"threads must be >= 0, got {self.threads}")


def load_train_test(dataset: str, data_dir: str = "", download: bool = False,
                    binarize: bool = False) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """((x_train, y_train), (x_test, y_test)) as float32 images in [0, 1] and int64 labels."""
    from ..data import binarize as to_binary
    from ..data import load_dataset

    out = []
    for split in ("train", "test"):
        x, y = load_dataset(dataset, split, data_dir=data_dir or None, download=download)
        out.append((to_binary(x) if binarize else x, y))
    return tuple(out)


def run_training(cfg: TrainConfig, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train as configured; returns the results dict (also written to ``results.json``)."""
    out_dir = Path(out_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    joined = D.init_from_env("gloo")
    try:
        rank, size = D.world()
        train, test = load_train_test(cfg.dataset, cfg.data_dir, cfg.download, cfg.binarize)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = build_model(cfg.model, cfg.norm, in_shape=tuple(train[0].shape[1:]),
                            num_classes=dataset_info(cfg.dataset).num_classes)
        if cfg.sync_bn:
            convert = getattr(bnlab, "convert_sync_batchnorm", None)
            if convert is None:
                raise ConfigError("--sync-bn needs bnlab.convert_sync_batchnorm (not in this build)")
            model = convert(model)
        if rank == 0:
            write_json(out_dir / "config.json", {
                "command": "train", "config": config_to_dict(cfg), "world_size": size,
                "meta": run_metadata(),
            })
        results = fit(model, train, test, LoopConfig.from_config(cfg), out_dir, resume=resume,
                      meta={"model": cfg.model, "dataset": cfg.dataset, "norm": cfg.norm,
                            "binarize": cfg.binarize, "sync_bn": cfg.sync_bn, "world_size": size},
                      desc=f"train {cfg.model}")
        final = results["final"] or {}
        results = {"world_size": size, "final_test_acc": final.get("test_acc"), **results}
        if rank == 0:
            write_json(out_dir / "results.json", results)
        return results
    finally:
        if joined:
            D.shutdown()
