"""Running statistics never enter the autograd graph; memory does not grow with steps."""
from __future__ import annotations

import gc

import torch

import bnlab


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_buffers_carry_no_autograd_history():
    m = bnlab.BatchNorm2d(4)
    x = torch.randn(8, 4, 3, 3, requires_grad=True)
    m(x).sum().backward()
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        buf = getattr(m, name)
        assert buf.grad_fn is None and not buf.requires_grad, name


def test_memory_flat_over_1000_steps():
    """1,000 training steps: resident memory stays flat (a chained graph would add ~1 MB per step)."""
    m = bnlab.BatchNorm2d(16)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    x = torch.randn(16, 16, 16, 16)   # 256 KiB input: a leaked graph keeps one per step

    def step():
        opt.zero_grad()
        y = m(x.requires_grad_())
        (y * y).mean().backward()
        opt.step()

    for _ in range(50):     # warm up allocator caches
        step()
    gc.collect()
    before = _rss_bytes()
    for _ in range(1000):
        step()
    gc.collect()
    growth = _rss_bytes() - before
    assert growth < 32 * 2**20, f"memory grew by {growth / 2**20:.1f} MiB over 1,000 steps"
    assert m.running_mean.grad_fn is None
    assert int(m.num_batches_tracked) == 1050
