"""Pieces shared by the d2l-lenet, scale-shift, wall-clock and lr-sweep experiments.

- :class:`FashionData`: the data fields of these experiments — Fashion-MNIST preferred (offline
  from Debian's ``dataset-fashion-mnist`` or the data directory), the embedded MNIST digits as
  the fallback where it is not installed, and an optional fixed test subset for short presets;
- :func:`load_data` / :func:`data_note`: the splits, and the sentence saying which data a run used;
- :func:`fit_metrics` / :func:`series_of`: the per-seed scalars and curves of one
  :func:`~bnlab.lab.engine.train.fit` result.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..config import check, option
from ..data.choose import choose_dataset
from .framework import DataConfig, Splits, load_splits

__all__ = ["FashionData", "TINY_DATA", "load_data", "data_note", "used_dataset", "fit_metrics", "series_of",
           "CHANCE_LOSS"]

#: the data of every ``tiny`` preset: two seeds on a few embedded digits (tests, seconds)
TINY_DATA = dict(seeds=(0, 1), dataset="mnist-embedded", fallback_dataset="", val_size=200,
                 train_limit=600, test_limit=300)
CHANCE_LOSS = math.log(10)  # cross-entropy of a uniform guess over 10 classes
_TEST_SUBSET_SEED = 31415


@dataclass(frozen=True)
class FashionData(DataConfig):
    """Fashion-MNIST first; ``fallback_dataset`` when it is not installed ('' = none: an error)."""

    dataset: str = option("fashion-mnist", "dataset name (bnlab data list)")
    fallback_dataset: str = option("mnist-embedded", "used when `dataset` is not on disk ('' = fail)")
    val_size: int = option(5000, "training images held out as the validation split (selects the step)")
    test_limit: int = option(0, "evaluate on a fixed random subset of this many test images (0 = all)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.test_limit >= 0, f"test_limit must be >= 0, got {self.test_limit}")


def used_dataset(cfg: FashionData) -> str:
    """The dataset a run of ``cfg`` trains on (``dataset``, or the fallback when it is absent)."""
    return choose_dataset(cfg.dataset, cfg.fallback_dataset, cfg.data_dir or None, cfg.download)


def load_data(cfg: FashionData, *, standardized: bool = False) -> Splits:
    """(train, val, test) of the dataset :func:`used_dataset` picks; test cut to ``test_limit``."""
    name = used_dataset(cfg)
    splits = load_splits(dataclasses.replace(cfg, dataset=name), standardized=standardized)
    x_test, y_test = splits.test
    if cfg.test_limit and cfg.test_limit < len(x_test):
        g = torch.Generator().manual_seed(_TEST_SUBSET_SEED)
        keep = torch.randperm(len(x_test), generator=g)[:cfg.test_limit]
        splits = Splits(splits.train, splits.val, (x_test[keep], y_test[keep]))
    return splits


def data_note(cfg: FashionData) -> str:
    """One sentence for the report: which data this run used, and how much of it."""
    name = used_dataset(cfg)
    sizes = []
    if cfg.train_limit:
        sizes.append(f"{cfg.train_limit:,} training images")
    sizes.append(f"{cfg.val_size:,} validation images held out from train")
    sizes.append(f"a fixed random {cfg.test_limit:,} of the test images" if cfg.test_limit
                 else "the whole test set")
    what = f"Data: {name} ({', '.join(sizes)})."
    if name != cfg.dataset:
        what += (f" {cfg.dataset} is not installed, so the run fell back to {name}; "
                 f"`apt-get install dataset-fashion-mnist` (or --download) gives the full-scale data.")
    return what


def fit_metrics(res: dict[str, Any]) -> dict[str, float]:
    """Per-seed scalars of one fit result (accuracies in percent).

    ``test_acc``/``val_acc`` at the validation-selected step, ``test_acc_final`` and
    ``train_loss_final`` at the last evaluation, ``diverged`` = 1 when the loss became
    non-finite or training ended no better than chance (train loss ≥ ln 10), else 0.
    """
    hist = res["history"]
    if res["status"] != "completed" or not hist:
        return {"test_acc": 10.0, "val_acc": 10.0, "test_acc_final": 10.0,
                "train_loss_final": math.inf, "diverged": 1.0}
    sel, last = res["selected"], hist[-1]
    return {"test_acc": 100 * sel["test_acc"], "val_acc": 100 * sel["val_acc"],
            "test_acc_final": 100 * last["test_acc"], "train_loss_final": last["train_loss"],
            "diverged": float(not last["train_loss"] < CHANCE_LOSS)}


def series_of(res: dict[str, Any], per: float = 1.0) -> dict[str, list[float]]:
    """Curves of one fit result: ``x`` = step / ``per`` (e.g. steps per epoch), accuracies in %."""
    hist = res["history"]
    return {"x": [r["step"] / per for r in hist], "test_acc": [100 * r["test_acc"] for r in hist],
            "val_acc": [100 * r["val_acc"] for r in hist],
            "train_loss": [r["train_loss"] for r in hist]}
