"""The non-finite guard: a NaN/inf batch never reaches the running statistics.

Oracles: torch BN fed only the finite batches (guard on), torch BN fed every batch
(guard off, and for finite input with the guard on).
"""
from __future__ import annotations

import warnings

import pytest
import torch

import bnlab

BNLAB = {1: bnlab.BatchNorm1d, 2: bnlab.BatchNorm2d, 3: bnlab.BatchNorm3d}
TORCH = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}
SHAPES = {1: (6, 3), 2: (4, 3, 2, 2), 3: (2, 3, 2, 2, 2)}
BAD = [float("nan"), float("inf"), float("-inf")]


def _poisoned(shape, value):
    x = torch.randn(shape)
    x.view(-1)[1] = value
    return x


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_guard_skips_and_matches_torch_on_finite_batches(dim, bad, momentum):
    ours, ref = BNLAB[dim](3, momentum=momentum), TORCH[dim](3, momentum=momentum)
    schedule = ["ok", "bad", "ok", "bad", "ok"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for kind in schedule:
            x = torch.randn(SHAPES[dim]) * 2 + 1 if kind == "ok" else _poisoned(SHAPES[dim], bad)
            y = ours(x)
            if kind == "ok":
                torch.testing.assert_close(y, ref(x))
            else:
                assert not torch.isfinite(y).all()                 # the output itself is not hidden
    assert len([w for w in caught if "non-finite statistics" in str(w.message)]) == 1   # warns once
    assert ours.skipped_batches == 2
    assert int(ours.num_batches_tracked) == 3 == int(ref.num_batches_tracked)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)


@pytest.mark.parametrize("bad", BAD)
def test_guard_off_behaves_like_torch(bad):
    ours, ref = bnlab.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    ours.nonfinite_guard = False
    x = _poisoned((6, 3), bad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                               # no warning when switched off
        ours(x)
    ref(x)
    # the same channels are poisoned (for an inf input torch's mean is inf and bnlab's
    # compensated two-pass mean NaN; either way the statistics are lost, as in torch)
    for name in ("running_mean", "running_var"):
        a, b = getattr(ours, name), getattr(ref, name)
        assert torch.equal(torch.isfinite(a), torch.isfinite(b))
        torch.testing.assert_close(a[torch.isfinite(b)], b[torch.isfinite(b)])
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 1
    assert ours.skipped_batches == 0


def test_guard_is_on_by_default_and_not_in_state_dict():
    layer = bnlab.BatchNorm2d(3)
    assert layer.nonfinite_guard is True and layer.skipped_batches == 0
    assert list(layer.state_dict()) == list(torch.nn.BatchNorm2d(3).state_dict())


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("momentum", [0.1, 0.9, None])
def test_finite_parity_with_torch_guard_on(dim, momentum, backend):
    ours, ref = BNLAB[dim](3, momentum=momentum), TORCH[dim](3, momentum=momentum)
    for step in range(4):
        x = torch.randn(SHAPES[dim]) * (1 + step) + 10.0 * step
        torch.testing.assert_close(ours(x), ref(x), rtol=2e-5, atol=2e-5)
    assert ours.skipped_batches == 0
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=2e-5, atol=2e-5)


def test_eval_mode_nonfinite_input_touches_nothing():
    layer = bnlab.BatchNorm1d(3).eval()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer(_poisoned((4, 3), float("nan")))
    assert layer.skipped_batches == 0
    for k, v in layer.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_guard_with_cumulative_average_excludes_skipped():
    """momentum=None divides by num_batches_tracked, which skipped batches do not advance."""
    layer = bnlab.BatchNorm1d(2, momentum=None)
    a, b = torch.randn(5, 2), torch.randn(5, 2) + 3
    with pytest.warns(RuntimeWarning):
        layer(a), layer(torch.full((5, 2), float("nan"))), layer(b)
    torch.testing.assert_close(layer.running_mean, (a.mean(0) + b.mean(0)) / 2)
