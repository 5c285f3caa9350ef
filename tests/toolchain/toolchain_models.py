"""Small models holding every bnlab layer, shared by the toolchain tests."""
from __future__ import annotations

import torch
from torch import nn

import bnlab

KINDS = ("bn", "ghost", "renorm", "sync", "frozen")


def make_layer(kind: str, c: int, dim: int = 2) -> nn.Module:
    """One bnlab layer of ``kind`` for ``dim``-d inputs (Sync is rank-free)."""
    if kind == "sync":
        return bnlab.SyncBatchNorm(c)
    cls = {"bn": "BatchNorm", "ghost": "GhostBatchNorm", "renorm": "BatchRenorm", "frozen": "FrozenBatchNorm"}[kind]
    kwargs = {"ghost": dict(virtual_batch_size=2),
              "renorm": dict(warmup_steps=0, r_max_steps=0, d_max_steps=0, r_max=1.5, d_max=0.5)}.get(kind, {})
    return getattr(bnlab, f"{cls}{dim}d")(c, **kwargs)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial statistics and affine parameters in every BN layer (γ, β, E[x], Var[x])."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "running_var", None) is not None:
                c = m.running_var.numel()
                m.running_mean.copy_(torch.rand(c, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.num_batches_tracked.fill_(3)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(c, generator=g) - 0.5)
    return model


def every_layer_model() -> nn.Module:
    """x → BN → Conv → Ghost → ReLU → Renorm → ReLU → Sync → ReLU → Frozen: all five kinds.

    The layers after a ReLU cannot be folded into a convolution, so an exported graph
    keeps their normalization as nodes; the one after the Conv may be folded.
    """
    torch.manual_seed(0)
    return randomize(nn.Sequential(
        make_layer("bn", 3), nn.Conv2d(3, 4, 3, padding=1), make_layer("ghost", 4), nn.ReLU(),
        make_layer("renorm", 4), nn.ReLU(), make_layer("sync", 4), nn.ReLU(), make_layer("frozen", 4),
    ))


def torch_twin(model: nn.Module) -> nn.Module:
    """The same model with torch.nn.BatchNorm2d in place of every bnlab layer (the oracle in eval mode)."""
    import copy

    twin = copy.deepcopy(model)
    for name, m in list(twin.named_modules()):
        if type(m).__module__.startswith("bnlab."):
            new = nn.BatchNorm2d(m.num_features, eps=m.eps).eval()
            new.load_state_dict({k: v for k, v in m.state_dict().items()}, strict=False)
            parent, _, leaf = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, leaf, new)
    return twin
