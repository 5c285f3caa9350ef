"""Training checkpoints: atomic writes, safe loads.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only (model and
optimizer ``state_dict``, step, RNG state, evaluation history), so it loads with
``torch.load(..., weights_only=True)``: no pickled code runs when a checkpoint is read.
Writes go to a temp file beside the target and are renamed into place
(:func:`bnlab.lab.runs.runfiles.atomic_write`), so a run killed while saving leaves the
previous checkpoint intact.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .runfiles import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    return atomic_write(path, lambda f: torch.save(state, f), mode="wb")


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)
