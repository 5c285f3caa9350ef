"""Batch statistics across processes: the collectives behind :class:`bnlab.SyncBatchNorm`.

The mini-batch ``B`` of Algorithm 1 is split over the ranks of a process group,
rank ``r`` holding ``m_r ≥ 0`` values per channel (``m = Σ m_r``). Two collectives
make every rank see the statistics of the whole of ``B``:

* forward — every rank summarises its shard as ``(m_r, μ_r, M2_r)`` with
  ``M2_r = Σ (x − μ_r)²`` (the compensated two-pass of :mod:`bnlab._stats`), the
  summaries are all-gathered, and each rank merges them with Chan et al.'s
  parallel algorithm, in the same order on every rank, so the merged ``μ_B`` and
  ``σ²_B = M2/m`` are bit-identical across ranks. ``E[x²] − E[x]²`` is never used.
* backward — the two per-channel sums of Section 3's closed form, ``Σ dy`` and
  ``Σ dy·x̂``, are all-reduced (sum).

A rank with an empty shard (``m_r = 0``) sends a zero summary and zero sums: it
joins every collective, so its peers never wait for it. Only ``all_gather`` and
``all_reduce`` of float64 tensors on the input's device are used, which every
``torch.distributed`` backend provides (tested: gloo on CPU).

Chan, Golub & LeVeque, "Updating Formulae and a Pairwise Algorithm for Computing
Sample Variances", 1979/1983.
"""
from __future__ import annotations

import torch

from .._stats import broadcast_shape, channel_mean_var, compute_dtype, count_per_channel, merge_mean_m2, reduce_dims

__all__ = ["sync_group", "resolve_group", "group_size", "local_summary", "merge_summaries", "global_mean_var",
           "grad_sums", "all_reduce_sum"]


def _dist():
    """``torch.distributed`` if it is built and a default process group is initialized, else ``None``."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return None
    return dist


def sync_group(process_group=None):
    """The group to synchronise over, or ``None`` when there is nothing to synchronise.

    ``None`` when ``torch.distributed`` is unavailable or uninitialized, when the
    group has a single rank, or when this rank is not a member of ``process_group``
    (``get_world_size`` is then -1). ``process_group=None`` means the whole world.
    """
    dist = _dist()
    if dist is None:
        return None
    group = dist.group.WORLD if process_group is None else process_group
    return group if dist.get_world_size(group) > 1 else None


def resolve_group(name: str):
    """The process group a scripted SyncBatchNorm names: ``""`` is the world, else a group's ``group_name``."""
    import torch.distributed as dist

    if name == "":
        return None
    try:
        return dist.distributed_c10d._resolve_process_group(name)
    except Exception as err:  # noqa: BLE001 - torch raises several types for an unknown name
        raise RuntimeError(f"SyncBatchNorm: process group {name!r} (named when the module was scripted) does "
                           f"not exist in this process ({err})") from None


def group_size(input: torch.Tensor, group_name: str) -> int:
    """Ranks a SyncBatchNorm forward would synchronize over: 1 when :func:`sync_group` gives ``None``.

    The kernel of the operator ``bnlab::sync_group_size`` (registered in :mod:`bnlab.nn._sync_step`),
    through which TorchScript code (which cannot call ``torch.distributed``) asks the same
    question as eager code; the input only selects the dispatch key.
    """
    if _dist() is None:
        return 1
    group = sync_group(resolve_group(group_name))
    if group is None:
        return 1
    import torch.distributed as dist

    return dist.get_world_size(group)


def local_summary(x: torch.Tensor) -> torch.Tensor:
    """This rank's ``(m_r, μ_r, M2_r)`` packed as one float64 vector ``(1 + 2C,)``.

    Layout ``[m_r, μ_r (C,), M2_r (C,)]``; an empty shard gives all zeros
    (``channel_mean_var`` would give NaN, which must not enter the merge).
    """
    c = x.shape[1]
    m_r = count_per_channel(x)
    packed = torch.zeros(1 + 2 * c, dtype=torch.float64, device=x.device)
    if m_r > 0:
        mean, var = channel_mean_var(x)                              # μ_r, σ²_r   (C,) float64
        packed[0] = m_r
        packed[1 : 1 + c] = mean
        packed[1 + c :] = var * m_r                                  # M2_r = m_r·σ²_r
    return packed


def merge_summaries(gathered: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Merge per-rank summaries ``(W, 1 + 2C)`` into ``(m, μ_B, M2)`` (Chan et al.).

    Pairwise (tree) merge in rank order: ranks (0,1), (2,3), … then their results,
    which keeps the rounding error O(log W) and is deterministic, so every rank
    that merges the same gathered tensor gets bit-identical results.
    """
    c = (gathered.shape[1] - 1) // 2
    parts = [(row[0:1], row[1 : 1 + c], row[1 + c :]) for row in gathered]   # (1,), (C,), (C,)
    while len(parts) > 1:
        merged = [merge_mean_m2(*parts[i], *parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            merged.append(parts[-1])
        parts = merged
    count, mean, m2 = parts[0]
    return int(round(float(count.item()))), mean, m2


@torch.no_grad()
def global_mean_var(x: torch.Tensor, group) -> tuple[int, torch.Tensor, torch.Tensor]:
    """``(m, μ_B, σ²_B)`` of the batch that is the concatenation of every rank's ``x``.

    One all-gather of ``1 + 2C`` float64 values per rank. ``σ²_B = M2/m`` is the
    *biased* variance of Algorithm 1; both are float64 ``(C,)`` (NaN when ``m = 0``).
    Collective: every rank of ``group`` must call it, empty shard or not.
    """
    import torch.distributed as dist

    packed = local_summary(x)                                        # (1 + 2C,)
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(gathered, packed, group=group)
    m, mean, m2 = merge_summaries(torch.stack(gathered))             # (W, 1 + 2C) → m, (C,), (C,)
    if m == 0:
        nan = torch.full_like(mean, float("nan"))
        return 0, nan, nan.clone()
    return m, mean, m2 / m                                           # Alg. 1: σ²_B = M2/m


def grad_sums(dy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor):
    """This rank's ``Σ dy`` and ``Σ dy·x̂`` per channel, float64 ``(C,)`` each.

    ``x̂ = (x − μ_B)·σ⁻¹`` with the *global* ``μ_B`` and ``σ⁻¹ = 1/sqrt(σ²_B + ε)``.
    These are the local parts of dβ and dγ (Section 3); an empty shard gives zeros.
    """
    cd = compute_dtype(x.dtype)
    dims = reduce_dims(x)
    shape = broadcast_shape(x)                                       # (1, C, 1, ...)
    dyc = dy.to(cd)
    xhat = (x.to(cd) - mean.to(cd).view(shape)) * invstd.to(cd).view(shape)   # (N, C, *)
    sum_dy = dyc.sum(dim=dims, dtype=torch.float64)                  # Σ dy     (C,)
    sum_dy_xhat = (dyc * xhat).sum(dim=dims, dtype=torch.float64)    # Σ dy·x̂   (C,)
    return sum_dy, sum_dy_xhat


@torch.no_grad()
def all_reduce_sum(*vectors: torch.Tensor, group) -> tuple[torch.Tensor, ...]:
    """Sum equally shaped ``(C,)`` float64 vectors over the ranks of ``group`` (one all-reduce)."""
    import torch.distributed as dist

    packed = torch.cat(vectors)                                      # (k·C,)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    return tuple(packed.split(vectors[0].numel()))
