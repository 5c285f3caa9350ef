"""Readable names for a network's layers: ``"conv 1"``, ``"fc 2"`` instead of ``features.0.0``."""
from __future__ import annotations

from torch import nn

__all__ = ["layer_labels"]


def layer_labels(model: nn.Module) -> dict[str, str]:
    """Module path → ``"conv k"`` / ``"fc k"`` for every Conv2d and Linear, numbered in data-flow
    (registration) order; e.g. ``{"features.0.0": "conv 1", ..., "fc": "fc 1"}``."""
    labels, counts = {}, {"conv": 0, "fc": 0}
    for name, m in model.named_modules():
        kind = "conv" if isinstance(m, nn.Conv2d) else "fc" if isinstance(m, nn.Linear) else None
        if kind is not None:
            counts[kind] += 1
            labels[name] = f"{kind} {counts[kind]}"
    return labels
