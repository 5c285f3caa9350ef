"""BatchLoader: epochs are permutations, batches depend only on (seed, step), sharding."""
from __future__ import annotations

import pytest
import torch

from bnlab.lab.data import BatchLoader, binarize


def _data(n=23):
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1) * torch.ones(n, 3)  # (n, 3)
    return x, torch.arange(n)


@pytest.mark.parametrize("n, b, drop_last, expect", [
    (23, 5, True, 4), (23, 5, False, 5), (20, 5, True, 4), (20, 5, False, 4), (5, 5, True, 1),
])
def test_epoch_is_a_permutation(n, b, drop_last, expect):
    x, y = _data(n)
    loader = BatchLoader(x, y, batch_size=b, seed=3, drop_last=drop_last)
    assert len(loader) == expect
    for e in range(3):
        batches = list(loader.epoch(e))
        seen = torch.cat([yb for _, yb in batches])
        assert len(batches) == expect and len(set(seen.tolist())) == seen.numel()
        if not drop_last:
            assert sorted(seen.tolist()) == list(range(n))
        for xb, yb in batches:
            assert torch.equal(xb[:, 0], yb.float())  # rows stay paired with their labels


def test_reproducible_and_seed_dependent():
    x, y = _data()
    a = [yb.tolist() for _, yb in BatchLoader(x, y, batch_size=4, seed=1).epoch(2)]
    b = [yb.tolist() for _, yb in BatchLoader(x, y, batch_size=4, seed=1).epoch(2)]
    c = [yb.tolist() for _, yb in BatchLoader(x, y, batch_size=4, seed=2).epoch(2)]
    assert a == b and a != c
    d = [yb.tolist() for _, yb in BatchLoader(x, y, batch_size=4, seed=1).epoch(3)]
    assert a != d  # a fresh order every epoch


def test_resume_from_any_step():
    x, y = _data()
    full = BatchLoader(x, y, batch_size=4, seed=7).steps(0)
    reference = [next(full)[1].tolist() for _ in range(20)]  # crosses 3 epoch boundaries
    for start in (0, 5, 11, 19):
        resumed = BatchLoader(x, y, batch_size=4, seed=7).steps(start)
        assert [next(resumed)[1].tolist() for _ in range(20 - start)] == reference[start:]


def test_unshuffled_order():
    x, y = _data(10)
    loader = BatchLoader(x, y, batch_size=4, shuffle=False)
    assert [yb.tolist() for _, yb in loader] == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_partition_the_global_batch(world):
    x, y = _data(30)
    single = BatchLoader(x, y, batch_size=6, seed=5)
    shards = [BatchLoader(x, y, batch_size=6, seed=5, rank=r, world_size=world)
              for r in range(world)]
    for step in range(12):
        parts = [s.batch(step)[1] for s in shards]
        assert all(p.numel() == 6 // world for p in parts)
        assert torch.equal(torch.cat(parts), single.batch(step)[1])


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size"), (dict(batch_size=4, world_size=3), "divisible"),
    (dict(batch_size=4, rank=2, world_size=2), "rank"), (dict(batch_size=50), "smaller"),
])
def test_bad_arguments(kwargs, message):
    x, y = _data()
    with pytest.raises(ValueError, match=message):
        BatchLoader(x, y, **kwargs)
    with pytest.raises(ValueError, match="differ"):
        BatchLoader(x, y[:3], batch_size=2)


def test_binarize():
    x = torch.tensor([0.0, 0.5, 0.51, 1.0])
    assert binarize(x).tolist() == [0.0, 0.0, 1.0, 1.0]
    assert binarize(x, threshold=0.2).dtype == torch.float32
    assert binarize(torch.tensor([0, 200], dtype=torch.uint8), 127).tolist() == [0.0, 1.0]
