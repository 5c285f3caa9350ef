"""Loss closures over a module's parameters, without touching the module.

``loss_closure(model, loss_fn, x, y)`` returns ``loss_at(params) -> scalar``: the loss
of ``model`` on the fixed batch ``(x, y)`` with its parameters replaced by ``params``
(a name → tensor dict, as from ``named_parameters``). Buffers (Batch Normalization's
running statistics) are cloned for every call, so a measurement taken in training mode
normalizes with the batch statistics exactly like a training step but leaves the running
averages of the real model as they were.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

LossAt = Callable[[Mapping[str, Tensor]], Tensor]

__all__ = ["LossAt", "flat_norm", "grads_of", "loss_closure", "named_params"]


def named_params(model: nn.Module) -> dict[str, Tensor]:
    """Detached copies of the trainable parameters, in registration order."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def loss_closure(
    model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor
) -> LossAt:
    """``params ↦ loss_fn(model(x; params), y)`` with buffers cloned on every call."""
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

    def loss_at(params: Mapping[str, Tensor]) -> Tensor:
        state = {**{n: b.clone() for n, b in buffers.items()}, **params}
        return loss_fn(functional_call(model, state, (x,)), y)

    return loss_at


def grads_of(
    loss_at: LossAt, params: Mapping[str, Tensor], wrt: list[str] | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss at ``params`` and its gradient with respect to the names in ``wrt`` (default: all)."""
    wrt = list(params) if wrt is None else wrt
    leaves = {n: t.detach().clone().requires_grad_(n in wrt) for n, t in params.items()}
    loss = loss_at(leaves)
    grads = torch.autograd.grad(loss, [leaves[n] for n in wrt], allow_unused=True)
    out = {n: (torch.zeros_like(leaves[n]) if g is None else g.detach()) for n, g in zip(wrt, grads)}
    return loss.detach(), out


def flat_norm(tensors: Mapping[str, Tensor] | list[Tensor]) -> float:
    """Euclidean norm of the concatenation of ``tensors`` (accumulated in float64)."""
    values = tensors.values() if isinstance(tensors, Mapping) else tensors
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in values)))
