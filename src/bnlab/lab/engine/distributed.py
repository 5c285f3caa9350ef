"""Multi-process data parallelism for the trainer (``torchrun --nproc-per-node N -m bnlab train``).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_from_env` joins the process group with the ``gloo`` backend (CPU) — or
``nccl`` for CUDA when asked. Every rank draws the same global batch from the same seed
and trains on its contiguous slice of it, and DDP averages the gradients, so with no
batch-dependent layer a 2-process run equals a 1-process run on the whole batch;
with BN each rank normalizes over its own slice unless SyncBatchNorm is used.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

__all__ = ["init_from_env", "world", "is_main", "barrier", "all_mean", "shutdown"]


def init_from_env(backend: str = "gloo") -> bool:
    """Join the process group if launched by torchrun with WORLD_SIZE > 1; True if joined."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend=backend, init_method="env://")
        return True
    return False


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def all_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (the tensor itself with one process)."""
    _, size = world()
    if size == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / size


def shutdown() -> None:
    """Leave the process group (call it from a ``finally``).

    On a normal exit the ranks first meet at a barrier, so that none tears its
    connections down while another still uses them (as the CLI's session does); while
    an exception propagates there is no barrier: a peer may be gone, and the
    collective timeout would only delay the error.
    """
    if dist.is_available() and dist.is_initialized():
        if sys.exc_info()[0] is None and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
