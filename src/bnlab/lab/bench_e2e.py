"""End-to-end part of ``bnlab bench``: a full SGD step with torch vs bnlab BN layers.

Models: the source document's ``Net`` (conv 3→64, BN, ReLU, completed into a small
classifier) and a ResNet-style network of basic blocks. The bnlab twin of each is made
by :func:`bnlab.convert_model`, so both start from identical weights.
"""
from __future__ import annotations

import time

import torch
from torch import nn

import bnlab

__all__ = ["Net", "small_resnet", "bench_end_to_end"]


class Net(nn.Module):
    """The source document's ``Net`` (conv 3→64, BN, ReLU), completed into a classifier."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, padding=1)
        self.batch_norm1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 128, kernel_size=3, padding=1)
        self.batch_norm2 = nn.BatchNorm2d(128)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(128, classes)

    def forward(self, x):
        x = self.relu(self.batch_norm1(self.conv1(x)))
        x = nn.functional.max_pool2d(x, 2)
        x = self.relu(self.batch_norm2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.short(x))


def small_resnet(classes: int = 10) -> nn.Module:
    """A ResNet-style network: stem + three basic blocks (32, 64, 128 channels) + linear."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        _Block(32, 32, 1), _Block(32, 64, 2), _Block(64, 128, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, classes),
    )


def bench_end_to_end(cfg) -> dict:
    """Median SGD-step time of each model with torch BN vs bnlab BN (interleaved).

    ``cfg`` is a :class:`bnlab.lab.bench.BenchConfig` (reps, warmup, e2e_batch, e2e_size).
    """
    from .bench import summary

    out = {}
    for name, build in (("Net", Net), ("ResNet", small_resnet)):
        torch.manual_seed(0)
        x = torch.randn(cfg.e2e_batch, 3, cfg.e2e_size, cfg.e2e_size)
        target = torch.randint(0, 10, (cfg.e2e_batch,))
        variants = {"torch": build()}
        variants["bnlab"] = bnlab.convert_model(build(), to="bnlab")
        steps = {}
        for v, model in variants.items():
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

            def step(model=model, opt=opt) -> float:
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x), target).backward()
                opt.step()
                return time.perf_counter() - t0
            steps[v] = step
        times = {v: [] for v in steps}
        for r in range(cfg.warmup + cfg.reps):
            for v in (list(steps) if r % 2 else list(steps)[::-1]):
                t = steps[v]()
                if r >= cfg.warmup:
                    times[v].append(t)
        res = {v: summary(ts) for v, ts in times.items()}
        res["speedup"] = res["torch"]["median_ms"] / res["bnlab"]["median_ms"]
        out[name] = res
    return out
