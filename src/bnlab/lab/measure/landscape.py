"""Loss landscape, gradient predictiveness and effective β-smoothness along the gradient.

Santurkar, Tsipras, Ilyas & Madry (2018), "How Does Batch Normalization Help
Optimization?", Section 3.1 and Figure 4. At the current weights ``w`` with gradient
``g = ∇L(w)`` on a fixed batch, for step sizes ``η`` in a grid (the paper and this lab:
``η ∈ [0.5, 4] × lr``):

- loss landscape:           ``L(w − ηg)`` for every ``η``; the plot shades its range;
- gradient predictiveness:  ``‖∇L(w − ηg) − ∇L(w)‖₂`` for every ``η``; shaded range;
- effective β-smoothness:   ``max_η ‖∇L(w − ηg) − ∇L(w)‖₂ / ‖ηg‖₂``.

For a quadratic ``L(w) = ½ (w − w*)ᵀ H (w − w*)`` these are known in closed form:
``L(w − ηg) = L(w) − η‖g‖² + ½η² gᵀHg``, the gradient change is ``η‖Hg‖`` and the
β-smoothness is ``‖Hg‖ / ‖g‖ ≤ λ_max(H)`` for every ``η`` — the tests use exactly that.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence


from torch import Tensor

from .functional import LossAt, flat_norm, grads_of

__all__ = ["DEFAULT_MULTIPLIERS", "LandscapeProbe", "probe_along_gradient"]

# η / lr grid of the paper's Figure 4 protocol: 8 points from 0.5 to 4.
DEFAULT_MULTIPLIERS: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)


@dataclass(frozen=True)
class LandscapeProbe:
    """One probe at one training step; lists are indexed like ``etas``."""

    etas: tuple[float, ...]
    loss: float                      # L(w)
    grad_norm: float                 # ‖g‖
    losses: tuple[float, ...]        # L(w − ηg)
    grad_changes: tuple[float, ...]  # ‖∇L(w − ηg) − ∇L(w)‖

    @property
    def loss_range(self) -> tuple[float, float]:
        """(min, max) of the loss along the gradient direction, ``L(w)`` included."""
        values = (self.loss, *self.losses)
        return min(values), max(values)

    @property
    def grad_change_range(self) -> tuple[float, float]:
        return min(self.grad_changes), max(self.grad_changes)

    @property
    def beta(self) -> float:
        """Effective β-smoothness: ``max_η ‖Δ∇L‖ / ‖ηg‖`` (0 where ``g = 0``)."""
        ratios = [
            c / (eta * self.grad_norm)
            for eta, c in zip(self.etas, self.grad_changes)
            if eta * self.grad_norm > 0
        ]
        return max(ratios, default=0.0)

    def as_dict(self) -> dict:
        lo, hi = self.loss_range
        glo, ghi = self.grad_change_range
        return {
            "loss": self.loss, "grad_norm": self.grad_norm,
            "loss_min": lo, "loss_max": hi, "grad_change_min": glo, "grad_change_max": ghi,
            "beta": self.beta, "etas": list(self.etas), "losses": list(self.losses),
            "grad_changes": list(self.grad_changes),
        }


def probe_along_gradient(
    loss_at: LossAt,
    params: Mapping[str, Tensor],
    lr: float,
    multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
) -> LandscapeProbe:
    """Measure ``L`` and ``∇L`` at ``w − ηg`` for ``η = m · lr``, ``m`` in ``multipliers``.

    Args:
        loss_at: ``params ↦ scalar loss`` on one fixed batch (see ``loss_closure``).
        params: the current weights ``w`` (name → tensor); not modified.
        lr: the learning rate the step sizes are multiples of.
        multipliers: ``η / lr`` grid.

    Returns:
        a :class:`LandscapeProbe`; non-finite losses are kept as ``inf``/``nan`` so that a
        diverging step shows up in the record instead of raising.
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    loss0, g = grads_of(loss_at, params)                       # g = ∇L(w)
    etas = tuple(float(m) * lr for m in multipliers)
    losses, changes = [], []
    for eta in etas:
        moved = {n: params[n].detach() - eta * g[n] for n in params}   # w − ηg
        loss_eta, g_eta = grads_of(loss_at, moved)
        losses.append(float(loss_eta))
        changes.append(flat_norm({n: g_eta[n] - g[n] for n in g}))     # ‖∇L(w−ηg) − ∇L(w)‖
    return LandscapeProbe(
        etas=etas, loss=float(loss0), grad_norm=flat_norm(g),
        losses=tuple(losses), grad_changes=tuple(changes),
    )


def quadratic_closure(h: Tensor, w_star: Tensor, name: str = "w") -> LossAt:
    """``L(w) = ½ (w − w*)ᵀ H (w − w*)``, the closed-form oracle of this module's tests."""

    def loss_at(params: Mapping[str, Tensor]) -> Tensor:
        d = params[name] - w_star
        return 0.5 * d @ (h @ d)

    return loss_at


