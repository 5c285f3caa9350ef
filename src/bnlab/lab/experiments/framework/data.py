"""The one data path of the experiments: train / validation / test splits from ``load_dataset``.

The validation split is carved out of the *training* set (a fixed random subset, the same
for every arm and seed), so it can select the training step while the test set stays
untouched until the numbers are reported. ``train_limit`` keeps a fixed random subset of the
remaining training images (the stored splits are ordered by class, so a prefix would not be
a sample). ``standardize`` rescales every split with the training subset's per-channel mean
and standard deviation; ``binarize`` thresholds the pixels at 0.5 first (the paper's MNIST).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ...config import check, option

__all__ = ["DataConfig", "Splits", "load_splits", "standardize"]

Split = tuple[Tensor, Tensor]
_SPLIT_SEED = 20150211  # fixed: the validation/train partition never depends on a run's seed



@dataclass(frozen=True)
class DataConfig:
    """Data fields shared by the experiment configs (mix into an experiment's config class)."""

    dataset: str = option("mnist-embedded", "dataset name (bnlab data list)")
    data_dir: str = option("", "data/cache directory ('' = default, env BNLAB_DATA)")
    download: bool = option(False, "download missing official files")
    val_size: int = option(500, "training images held out as the validation split (selects the step)")
    train_limit: int = option(0, "use this many of the remaining training images (0 = all)")

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        check(self.val_size >= 1, f"val_size must be >= 1, got {self.val_size}")
        check(self.train_limit >= 0, f"train_limit must be >= 0, got {self.train_limit}")


class Splits(NamedTuple):
    train: Split
    val: Split
    test: Split


def standardize(x_train: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """Per-channel zero mean, unit variance using the training images' statistics."""
    dims = [0] + list(range(2, x_train.dim()))                 # all but the channel dim
    mean = x_train.mean(dims, keepdim=True)                    # (1, C, 1, 1)
    std = x_train.std(dims, keepdim=True).clamp_min(1e-6)
    return tuple((x - mean) / std for x in (x_train, *others))


def load_splits(cfg: DataConfig, *, standardized: bool = False, binarized: bool = False) -> Splits:
    """(train, val, test) of ``cfg.dataset`` as float32 images and int64 labels."""
    from ...data import binarize, load_dataset

    kw = dict(data_dir=cfg.data_dir or None, download=cfg.download)
    x, y = load_dataset(cfg.dataset, "train", **kw)
    x_test, y_test = load_dataset(cfg.dataset, "test", **kw)
    check(cfg.val_size < len(x), f"val_size {cfg.val_size} must be below the {len(x)} training images")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    val_idx, train_idx = order[:cfg.val_size], order[cfg.val_size:]
    if cfg.train_limit:
        train_idx = train_idx[:cfg.train_limit]
    xs = (x[train_idx], x[val_idx], x_test)
    if binarized:
        xs = tuple(binarize(t) for t in xs)
    if standardized:
        xs = standardize(*xs)
    return Splits((xs[0], y[train_idx]), (xs[1], y[val_idx]), (xs[2], y_test))
