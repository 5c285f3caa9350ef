"""The seven known defects of the source document's sample layer, each shown absent in bnlab.

``SeedLayer`` re-creates the sample's behaviour (see shared/seed.md) so that every test
first shows the defect is real, then that bnlab does not have it.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import bnlab


class SeedLayer(nn.Module):
    """The source document's layer, reduced to its behaviour: 4-D only, momentum 0.9 on the
    new batch, biased running variance, running buffers rebuilt from graph-carrying tensors."""

    def __init__(self, c, eps=1e-5, momentum=0.9):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.gamma = nn.Parameter(torch.ones(c))
        self.beta = nn.Parameter(torch.zeros(c))
        self.register_buffer("moving_mean", torch.zeros(c))
        self.register_buffer("moving_variance", torch.ones(c))

    def forward(self, x):
        if self.training:
            mean = x.mean(dim=0, keepdim=True).mean(dim=2, keepdim=True).mean(dim=3, keepdim=True)
            var = ((x - mean) ** 2).mean(dim=0, keepdim=True).mean(dim=2, keepdim=True).mean(dim=3, keepdim=True)
            self.moving_mean = (1 - self.momentum) * self.moving_mean + self.momentum * mean.squeeze()
            self.moving_variance = (1 - self.momentum) * self.moving_variance + self.momentum * var.squeeze()
        else:
            mean = self.moving_mean.view(1, -1, 1, 1)
            var = self.moving_variance.view(1, -1, 1, 1)
        return self.gamma.view(1, -1, 1, 1) * (x - mean) / torch.sqrt(var + self.eps) + self.beta.view(1, -1, 1, 1)


def test_defect1_momentum_convention():
    """bnlab's momentum 0.1 keeps 90% of the old estimate (= Keras 0.9); the sample's 0.9 keeps 10%."""
    x = torch.randn(8, 3, 4, 4) + 5
    batch_mean = x.mean(dim=(0, 2, 3))
    seed, ours = SeedLayer(3), bnlab.BatchNorm2d(3)
    seed(x)
    ours(x)
    torch.testing.assert_close(seed.moving_mean.detach(), 0.9 * batch_mean)      # chases the batch
    torch.testing.assert_close(ours.running_mean, 0.1 * batch_mean)              # PyTorch 0.1 ≙ Keras 0.9
    ref = torch.nn.BatchNorm2d(3)
    ref(x)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)


def test_defect2_unbiased_running_variance():
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    unbiased = x.var(dim=(0, 2, 3), unbiased=True)
    seed = SeedLayer(3, momentum=1.0).double()
    seed(x)
    assert not torch.allclose(seed.moving_variance.detach(), unbiased)
    ours = bnlab.BatchNorm2d(3, momentum=1.0).double()
    ours(x)
    torch.testing.assert_close(ours.running_var, unbiased)


def test_defect3_no_graph_in_running_statistics():
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    seed = SeedLayer(3)
    seed(x)
    seed(x)
    assert seed.moving_mean.grad_fn is not None       # the graph chains from step to step
    ours = bnlab.BatchNorm2d(3)
    ours(x)
    ours(x)
    assert ours.running_mean.grad_fn is None and ours.running_var.grad_fn is None


@pytest.mark.parametrize("cls,shape", [(bnlab.BatchNorm1d, (8, 3)), (bnlab.BatchNorm1d, (4, 3, 5)),
                                       (bnlab.BatchNorm3d, (2, 3, 2, 2, 2))])
def test_defect4_any_rank_and_channel_check(cls, shape):
    x = torch.randn(shape)
    with pytest.raises(Exception):
        SeedLayer(3)(x)                               # only 4-D works in the sample
    y = cls(3)(x)
    assert y.shape == x.shape
    with pytest.raises(ValueError, match="should contain 3 elements not 4: the input has 3 channels"):
        cls(4)(x)


def test_defect5_half_precision_accumulation():
    """float16 input with an offset: chained float16 means lose the variance; bnlab does not."""
    x = (100 + torch.randn(64, 4, 32, 32, dtype=torch.float64)).half()
    truth = x.double().var(dim=(0, 2, 3), unbiased=True)
    seed = SeedLayer(4, momentum=1.0).half()
    seed(x)
    seed_err = ((seed.moving_variance.double() * 65536 / 65535 - truth) / truth).abs().max().item()
    ours = bnlab.BatchNorm2d(4, momentum=1.0)          # float32 statistics for float16 input
    ours(x)
    our_err = ((ours.running_var.double() - truth) / truth).abs().max().item()
    assert our_err < 1e-4 < seed_err


def test_defect6_flags_and_state_dict_compatibility():
    for flags in (dict(affine=False), dict(track_running_stats=False), dict(momentum=None)):
        ours, ref = bnlab.BatchNorm2d(3, **flags), torch.nn.BatchNorm2d(3, **flags)
        ref.load_state_dict(ours.state_dict())
        ours.load_state_dict(ref.state_dict())
    assert "num_batches_tracked" in bnlab.BatchNorm2d(3).state_dict()
    with pytest.raises(RuntimeError):
        torch.nn.BatchNorm2d(3).load_state_dict(SeedLayer(3).state_dict())


def test_defect7_closed_form_backward_saves_less():
    x = torch.randn(8, 16, 8, 8, requires_grad=True)

    def saved_input_sized(module):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            module(x)
        return sum(1 for t in saved if t.numel() >= x.numel())

    assert saved_input_sized(SeedLayer(16)) >= 3        # autograd keeps several input-sized tensors
    assert saved_input_sized(bnlab.BatchNorm2d(16)) == 1    # only x itself
