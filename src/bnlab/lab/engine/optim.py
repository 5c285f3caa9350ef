"""Optimizers and learning-rate schedules of the trainer.

The schedule is a pure function of the step (no scheduler object, nothing to
checkpoint), so a resumed run sets exactly the learning rates an uninterrupted one does:

- ``constant``:     η_t = η
- ``step``:         η_t = η · γ^⌊t / s⌋          (multiply by γ every s steps)
- ``exponential``:  η_t = η · γ^(t / s)          (the same decay, spread smoothly;
                    the paper's ImageNet runs decay the rate exponentially, Sec. 4.2.1)
"""
from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["SCHEDULES", "OPTIMIZERS", "learning_rate", "make_optimizer", "set_lr"]

SCHEDULES = ("constant", "step", "exponential")
OPTIMIZERS = ("sgd", "adam")


def learning_rate(base_lr: float, schedule: str, step: int, lr_step: int, lr_gamma: float) -> float:
    """η_t for 0-based step ``step`` (see module docstring)."""
    if schedule == "constant":
        return base_lr
    if schedule == "step":
        return base_lr * lr_gamma ** (step // lr_step)
    if schedule == "exponential":
        return base_lr * lr_gamma ** (step / lr_step)
    raise ValueError(f"unknown schedule {schedule!r}; choose from {SCHEDULES}")


def make_optimizer(params: Iterable[torch.nn.Parameter], name: str, lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """SGD with (heavy-ball) momentum, or Adam with β₁ = ``momentum`` (0.9 as usual)."""
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
