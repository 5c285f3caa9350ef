"""An MLP with BN before every nonlinearity and a choice of what BN may learn afterwards.

Ioffe & Szegedy (2015), Sec. 3: normalizing a layer's inputs "may change what the layer
can represent. For instance, normalizing the inputs of a sigmoid would constrain them to
the linear regime of the nonlinearity", so BN learns a scale γ and a shift β per unit,
``y = γ·x̂ + β``, which can undo the normalization (γ = σ, β = μ gives the identity).

``affine`` selects what is learned:

- ``"affine"``: γ and β (``BatchNorm1d(affine=True)``, the paper's transform);
- ``"beta"``: β only (γ fixed at 1: the weight exists but does not train);
- ``"none"``: neither (``affine=False``: every unit's input is ~N(0, 1) per batch).

Layers: ``Linear(no bias) → BN → act`` for each hidden width, then a linear head;
``norm=None`` gives the same network without BN (``Linear(bias) → act``).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

import bnlab

__all__ = ["AffineMLP", "AFFINE_MODES", "ACTIVATIONS"]

AFFINE_MODES = ("affine", "beta", "none")
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"sigmoid": torch.sigmoid, "relu": torch.relu}


class AffineMLP(nn.Module):
    """``in → hidden... → classes`` with ``BN(affine mode) → act`` after every hidden linear layer.

    Args:
        act: ``"sigmoid"`` or ``"relu"``.
        affine: one of :data:`AFFINE_MODES`.
        hidden, in_features, num_classes: widths (784 → 100, 100, 100 → 10).
        norm: the BN class (``bnlab.BatchNorm1d``; ``torch.nn.BatchNorm1d`` works the same), or
            None for no normalization (``affine`` is then ignored).

    Shape: (N, 1, 28, 28) or (N, 784) → logits (N, num_classes).
    """

    def __init__(self, act: str = "sigmoid", affine: str = "affine",
                 hidden: tuple[int, ...] = (100, 100, 100), in_features: int = 784,
                 num_classes: int = 10, norm: type[nn.Module] | None = bnlab.BatchNorm1d) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {tuple(ACTIVATIONS)}, got {act!r}")
        if affine not in AFFINE_MODES:
            raise ValueError(f"affine must be one of {AFFINE_MODES}, got {affine!r}")
        self.act, self.affine = act, affine
        widths = (in_features, *hidden)
        self.linears = nn.ModuleList(nn.Linear(a, b, bias=norm is None) for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(norm(b, affine=affine != "none") if norm is not None else nn.Identity()
                                   for b in hidden)
        if affine == "beta" and norm is not None:
            for bn in self.norms:
                bn.weight.requires_grad_(False)  # γ stays 1; β learns
        self.head = nn.Linear(hidden[-1], num_classes)

    def forward_with_preacts(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits and each hidden layer's nonlinearity input ``γ·x̂ + β`` (N, width)."""
        h = x.flatten(1)                                   # (N, 784)
        f = ACTIVATIONS[self.act]
        preacts = []
        for lin, bn in zip(self.linears, self.norms):
            z = bn(lin(h))                                 # BN(Wu): (N, width)
            preacts.append(z)
            h = f(z)
        return self.head(h), preacts

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_preacts(x)[0]

    def affine_parameters(self) -> tuple[Tensor, Tensor]:
        """All hidden units' (γ, β) concatenated over layers (γ = 1, β = 0 where not learned)."""
        gammas, betas = [], []
        for bn in self.norms:
            if isinstance(bn, nn.Identity):
                continue
            n = bn.num_features
            gammas.append(bn.weight.detach().clone() if bn.weight is not None else torch.ones(n))
            betas.append(bn.bias.detach().clone() if bn.bias is not None else torch.zeros(n))
        if not gammas:
            return torch.empty(0), torch.empty(0)
        return torch.cat(gammas), torch.cat(betas)
