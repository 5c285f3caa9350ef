"""Internal covariate shift measured as a change of gradient (Santurkar et al., 2018).

Definition 2.1 of Santurkar, Tsipras, Ilyas & Madry (2018): for a network with layer
weights ``W_1 … W_k`` and a batch ``(x, y)``, the internal covariate shift of layer ``i``
at step ``t`` compares

    G_{t,i}  = ∇_{W_i} L(W_1^t,     …, W_{i−1}^t,     W_i^t, …, W_k^t; x, y)
    G'_{t,i} = ∇_{W_i} L(W_1^{t+1}, …, W_{i−1}^{t+1}, W_i^t, …, W_k^t; x, y)

through ``‖G − G'‖₂`` and ``cos(G, G') = ⟨G, G'⟩ / (‖G‖ ‖G'‖)``: ``G'`` is the gradient
layer ``i`` would see if the layers before it had already taken this step's update,
i.e. the change of its input distribution that Ioffe & Szegedy (2015, Section 2) call
internal covariate shift, seen through the optimisation problem of the layer.

Convention here: "the layers before layer i" are all parameters registered before the
first name of layer ``i`` in ``params`` (registration order = data-flow order for the
feed-forward networks of the lab); Batch Normalization's γ, β of earlier layers are
updated with them. The first layer therefore has ``G' = G`` exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from torch import Tensor

from .functional import LossAt, flat_norm, grads_of

__all__ = ["IcsPoint", "internal_covariate_shift"]


@dataclass(frozen=True)
class IcsPoint:
    """ICS of one layer at one step."""

    layer: str
    l2: float       # ‖G − G'‖₂
    cosine: float   # cos(G, G'), 1.0 when both are zero
    grad_norm: float  # ‖G‖₂

    def as_dict(self) -> dict:
        return {"layer": self.layer, "l2": self.l2, "cosine": self.cosine, "grad_norm": self.grad_norm}


def internal_covariate_shift(
    loss_at: LossAt,
    params: Mapping[str, Tensor],
    next_params: Mapping[str, Tensor],
    layers: Sequence[str | Sequence[str]],
    loss_at_next: LossAt | None = None,
) -> list[IcsPoint]:
    """ICS of every layer in ``layers`` for the step ``params → next_params``.

    Args:
        loss_at: ``params ↦ loss`` on the step's batch (see ``loss_closure``).
        params: weights ``W^t`` (name → tensor), in registration order.
        next_params: weights ``W^{t+1}`` after the optimizer step (same names).
        layers: the layers to measure, each a parameter name or a list of names
            (e.g. ``"features.0.weight"``); the gradient ``G`` is taken w.r.t. them.
        loss_at_next: closure used for ``G'`` (default ``loss_at``). A network whose
            forward pass itself changes between steps (the "noisy BN" of Santurkar et
            al.) passes the closure of the next step here, so ``G'`` sees what layer
            ``i`` will actually receive.

    Returns:
        one :class:`IcsPoint` per layer, in the order given.
    """
    names = list(params)
    loss_at_next = loss_at if loss_at_next is None else loss_at_next
    _, g_all = grads_of(loss_at, params)                         # G for every layer at once
    points = []
    for layer in layers:
        group = [layer] if isinstance(layer, str) else list(layer)
        missing = [n for n in group if n not in params]
        if missing:
            raise KeyError(f"unknown parameter(s) {missing}; have {names}")
        first = min(names.index(n) for n in group)
        earlier = set(names[:first])
        mixed = {n: (next_params[n] if n in earlier else params[n]) for n in names}
        _, g_prime = grads_of(loss_at_next, mixed, wrt=group)     # G' with W_{<i} at t+1
        g = {n: g_all[n] for n in group}
        diff = flat_norm({n: g[n] - g_prime[n] for n in group})
        norm_g, norm_gp = flat_norm(g), flat_norm(g_prime)
        dot = float(sum((g[n].double() * g_prime[n].double()).sum() for n in group))
        cosine = 1.0 if norm_g == 0 and norm_gp == 0 else dot / max(norm_g * norm_gp, 1e-300)
        points.append(IcsPoint(layer=", ".join(group), l2=diff, cosine=cosine, grad_norm=norm_g))
    return points
