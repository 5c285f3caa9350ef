"""The source document's Net (Conv2d 3→64, BatchNorm2d, ReLU) trains with bnlab.BatchNorm2d."""
from __future__ import annotations

import torch
from torch import nn

import bnlab
from conftest import forbid_torch_batchnorm


class Net(nn.Module):
    def __init__(self, norm=bnlab.BatchNorm2d, classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, padding=1)
        self.batch_norm1 = norm(64)
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))

    def forward(self, x):
        return self.head(self.relu(self.batch_norm1(self.conv1(x))))


def test_net_trains_and_matches_torch():
    g = torch.Generator().manual_seed(0)
    # a learnable task: the class is which colour channel carries the brightest blob
    x = torch.randn(128, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (128,), generator=g)
    x[torch.arange(128), y] += 1.5
    torch.manual_seed(0)
    ours = Net(bnlab.BatchNorm2d, classes=3)
    torch.manual_seed(0)
    ref = Net(nn.BatchNorm2d, classes=3)
    opt1 = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    opt2 = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for step in range(60):
        idx = torch.randint(0, 128, (32,), generator=g)
        with forbid_torch_batchnorm():
            loss1 = nn.functional.cross_entropy(ours(x[idx]), y[idx])
            opt1.zero_grad()
            loss1.backward()
        opt1.step()
        loss2 = nn.functional.cross_entropy(ref(x[idx]), y[idx])
        opt2.zero_grad()
        loss2.backward()
        opt2.step()
        losses.append(loss1.item())
        torch.testing.assert_close(loss1, loss2, rtol=1e-4, atol=1e-4)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    ours.eval()
    acc = (ours(x).argmax(1) == y).float().mean().item()
    assert acc > 0.9
