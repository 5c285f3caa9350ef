"""Shared pieces of the claim experiments (``lr``, ``landscape``, ``ics``, ``batch-size``,
``inference``): data loading, a small configurable CNN, per-network resumable runs,
seed statistics and figure saving.

Every network of an experiment is one :func:`bnlab.lab.train.fit` run tagged with its
name; ``fit`` checkpoints it under ``checkpoints/<tag>.pt`` and, with ``resume=True``,
continues an interrupted run from there or returns a finished one at once, so an
experiment killed half-way redoes only the part that was not finished.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "load_data", "small_cnn", "mean_spread", "fmt_mean_spread", "fmt_steps", "save_figure",
    "standardize", "kaiming_init",
]


def load_data(dataset: str, data_dir: str | None = None, download: bool = False,
              train_limit: int = 0) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``((x_train, y_train), (x_test, y_test))``, inputs standardized with training statistics."""
    from .data import load_dataset

    xtr, ytr = load_dataset(dataset, "train", data_dir=data_dir, download=download)
    xte, yte = load_dataset(dataset, "test", data_dir=data_dir, download=download)
    if train_limit:
        # a fixed random subset: the stored splits are ordered by class, so a prefix is not a sample
        keep = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))[:train_limit]
        xtr, ytr = xtr[keep], ytr[keep]
    xtr, xte = standardize(xtr, xte)
    return (xtr, ytr), (xte, yte)


def standardize(x_train: Tensor, x_test: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel zero mean, unit variance using the training set's statistics."""
    dims = [0] + list(range(2, x_train.dim()))
    mean = x_train.mean(dims, keepdim=True)
    std = x_train.std(dims, keepdim=True).clamp_min(1e-6)
    return (x_train - mean) / std, (x_test - mean) / std


_ACT = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}


def small_cnn(norm_layer: Callable[[int], nn.Module] | None, activation: str = "relu",
              dropout: float = 0.0, widths: Sequence[int] = (16, 32), hidden: int = 64,
              in_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> nn.Sequential:
    """Conv5×5-norm-act-pool ×2 → FC-norm-act-dropout → FC: a small CNN for claims on MNIST.

    ``norm_layer(C)`` builds the 2-D norm after each conv; the hidden FC layer gets a 1-D
    Batch Normalization (``bnlab.BatchNorm1d``) when the norm is a BN-type layer built by
    ``norm_layer`` for 2-D inputs, so here it is applied on ``(N, hidden, 1, 1)``.
    Convolutions have no bias when a norm follows (β takes its place, paper Sec. 3.2).
    Shape: ``(N, C, H, W) → (N, num_classes)``; H, W divisible by 4.
    """
    act = _ACT[activation]
    c, h, w = in_shape
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(c, width, 5, padding=2, bias=norm_layer is None)]
        if norm_layer is not None:
            layers.append(norm_layer(width))
        layers += [act(), nn.MaxPool2d(2)]
        c, h, w = width, h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, hidden, bias=norm_layer is None)]  # (N, hidden)
    if norm_layer is not None:
        layers += [nn.Unflatten(1, (hidden, 1, 1)), norm_layer(hidden), nn.Flatten()]   # (N, hidden, 1, 1)
    layers.append(act())
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, num_classes))
    return nn.Sequential(*layers)


def mean_spread(values: Sequence[float | None]) -> tuple[float, float, int]:
    """(mean, half of max − min, count) over the finite values; (nan, nan, 0) if none."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return math.nan, math.nan, 0
    return sum(vals) / len(vals), (max(vals) - min(vals)) / 2, len(vals)


def fmt_mean_spread(values: Sequence[float | None], scale: float = 100.0, digits: int = 1) -> str:
    """``"97.3 ± 0.2"`` (mean ± half-range over seeds, times ``scale``), ``"—"`` if none."""
    m, s, n = mean_spread(values)
    if n == 0:
        return "—"
    if n == 1:
        return f"{m * scale:.{digits}f}"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def fmt_steps(values: Sequence[int | None]) -> str:
    """Steps to reach a target over seeds: ``"400"``, ``"400 / 500"``, ``"never"`` per seed."""
    return " / ".join("never" if v is None else str(int(v)) for v in values) or "—"


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    from .runs.runfiles import atomic_write

    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"), mode="wb")
    plt.close(fig)
    return path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` under ``torch.manual_seed(seed)`` (initial weights a function of the seed)."""
    torch.manual_seed(seed)
    return build()


def kaiming_init(model: nn.Module) -> nn.Module:
    """He et al. (2015) normal init, ``W ~ N(0, 2 / fan_in)``, zero biases, for every conv/linear layer.

    PyTorch's default (uniform, gain 1/√3) shrinks the signal by ~√6 per ReLU layer, so a
    deep network without BN starts with vanishing activations and plain SGD barely moves it;
    with this init both networks of a with/without-BN comparison start trainable (fair test).
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model
