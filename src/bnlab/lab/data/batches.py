"""In-memory mini-batches for step-based training, reproducible and resumable by step number."""
from __future__ import annotations

from typing import Iterator

import torch

# Mixes (seed, epoch) into one generator seed; an odd 64-bit constant (golden ratio).
_EPOCH_MIX = 0x9E3779B97F4A7C15
_SEED_MOD = 2**63


def binarize(images: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Binary images: ``1.0`` where ``images > threshold``, else ``0.0`` (same dtype/shape).

    The paper's MNIST experiment (Ioffe & Szegedy 2015, Sec. 4.1) feeds the network
    28×28 binary images; apply this to the float images in [0, 1] from ``load_dataset``.
    """
    dtype = images.dtype if images.is_floating_point() else torch.float32
    return (images > threshold).to(dtype)


class BatchLoader:
    """Shuffled mini-batches of in-memory tensors, a pure function of ``(seed, step)``.

    Each epoch visits the samples in a fresh random order drawn from a
    ``torch.Generator`` seeded with a mix of ``seed`` and the epoch number, so the batch
    at global step ``s`` is always the same: a run resumed at step ``s`` (``steps(start=s)``)
    sees exactly the batches an uninterrupted run sees, and no generator state needs
    checkpointing. The permutation is drawn on the CPU; the batches are slices of
    ``tensors`` on whatever device they live on.

    Data parallel: with ``world_size > 1`` every rank computes the same global batch of
    ``batch_size`` samples and keeps its contiguous chunk ``rank`` of
    ``batch_size // world_size`` samples, so 2 ranks at ``batch_size=60`` together see the
    same 60 samples per step as 1 process at ``batch_size=60`` (``batch_size`` must divide
    evenly).

    Args:
        *tensors: tensors with the same first dimension N (e.g. ``images, labels``).
        batch_size: global batch size B.
        shuffle: reshuffle every epoch (False: samples in order).
        seed: shuffling seed.
        drop_last: drop the last incomplete batch of an epoch (default True, so every
            batch has B samples: batch statistics are then always over B samples).
        rank, world_size: this process's shard (see above).

    Example::

        loader = BatchLoader(x, y, batch_size=60, seed=0)
        for step, (xb, yb) in zip(range(start, total), loader.steps(start)):
            ...
        for xb, yb in loader:          # one epoch (epoch 0); loader.epoch(e) for others
            ...
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True, rank: int = 0,
                 world_size: int = 1) -> None:
        if not tensors:
            raise ValueError("BatchLoader needs at least one tensor")
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors):
            raise ValueError(f"tensors differ in length: {[t.shape[0] for t in tensors]}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by world_size {world_size}")
        if n < batch_size and drop_last:
            raise ValueError(f"dataset of {n} samples is smaller than one batch of {batch_size}")
        if n == 0:
            raise ValueError("cannot batch an empty dataset")
        self.tensors = tensors
        self.n = n
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self._cached: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    def permutation(self, epoch: int) -> torch.Tensor:
        """Sample order of ``epoch`` (int64, CPU): ``randperm`` seeded by ``(seed, epoch)``."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        if self.shuffle:
            g = torch.Generator().manual_seed((self.seed * _EPOCH_MIX + epoch) % _SEED_MOD)
            perm = torch.randperm(self.n, generator=g)
        else:
            perm = torch.arange(self.n)
        self._cached = (epoch, perm)
        return perm

    def batch(self, step: int) -> tuple[torch.Tensor, ...]:
        """This rank's share of the global batch number ``step`` (counted over all epochs)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, i = divmod(step, len(self))
        idx = self.permutation(epoch)[i * self.batch_size:(i + 1) * self.batch_size]  # (B,)
        per_rank = -(-idx.numel() // self.world_size)
        idx = idx[self.rank * per_rank:(self.rank + 1) * per_rank]  # (B / world_size,)
        return tuple(t[idx.to(t.device)] for t in self.tensors)

    def steps(self, start: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        """Endless batches from global step ``start`` on (epochs roll over transparently)."""
        step = start
        while True:
            yield self.batch(step)
            step += 1

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """The batches of one epoch, in order."""
        base = epoch * len(self)
        for i in range(len(self)):
            yield self.batch(base + i)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """Epoch 0 (use :meth:`epoch` or :meth:`steps` for more)."""
        return self.epoch(0)
