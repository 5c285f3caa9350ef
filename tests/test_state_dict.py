"""state_dicts move both ways between bnlab and torch; modes and flags behave as torch's."""
from __future__ import annotations

import io

import pytest
import torch

import bnlab

PAIRS = [(bnlab.BatchNorm1d, torch.nn.BatchNorm1d, (6, 4)),
         (bnlab.BatchNorm2d, torch.nn.BatchNorm2d, (3, 4, 2, 2)),
         (bnlab.BatchNorm3d, torch.nn.BatchNorm3d, (3, 4, 2, 2, 2))]
FLAGS = [dict(), dict(affine=False), dict(bias=False), dict(track_running_stats=False), dict(momentum=None)]


def _trained(cls, shape, flags, steps=3):
    m = cls(shape[1], **flags)
    for _ in range(steps):
        m(torch.randn(shape) * 2 + 1)
    if m.weight is not None:
        with torch.no_grad():
            m.weight.mul_(1.5)
    return m


@pytest.mark.parametrize("flags", FLAGS, ids=str)
@pytest.mark.parametrize("ours_cls,torch_cls,shape", PAIRS)
def test_state_dict_both_ways(ours_cls, torch_cls, shape, flags):
    for src_cls, dst_cls in ((ours_cls, torch_cls), (torch_cls, ours_cls)):
        src = _trained(src_cls, shape, flags)
        dst = dst_cls(shape[1], **flags)
        assert list(src.state_dict().keys()) == list(dst.state_dict().keys())
        dst.load_state_dict(src.state_dict(), strict=True)
        for k, v in src.state_dict().items():
            assert torch.equal(v, dst.state_dict()[k]) and v.dtype == dst.state_dict()[k].dtype, k
        src.eval()
        dst.eval()
        x = torch.randn(shape)
        torch.testing.assert_close(src(x), dst(x))


def test_checkpoint_file_round_trip_weights_only():
    m = _trained(bnlab.BatchNorm2d, (3, 4, 2, 2), {})
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    t = torch.nn.BatchNorm2d(4)
    t.load_state_dict(torch.load(buf, weights_only=True))
    assert int(t.num_batches_tracked) == 3


def test_old_checkpoint_without_num_batches_tracked():
    """Version-1 checkpoints (no num_batches_tracked) load, with the count at 0."""
    src = _trained(torch.nn.BatchNorm2d, (3, 4, 2, 2), {})
    sd = src.state_dict()
    del sd["num_batches_tracked"]
    sd._metadata = {"": {"version": 1}}
    m = bnlab.BatchNorm2d(4)
    m.num_batches_tracked.fill_(7)
    m.load_state_dict(sd, strict=True)
    assert int(m.num_batches_tracked) == 7     # kept, as torch does
    fresh = bnlab.BatchNorm2d(4)
    fresh.load_state_dict(sd)
    assert int(fresh.num_batches_tracked) == 0
    torch.testing.assert_close(fresh.running_mean, src.running_mean)
    # a current-version checkpoint that lacks the key is an error under strict loading
    sd2 = src.state_dict()
    del sd2["num_batches_tracked"]
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        bnlab.BatchNorm2d(4).load_state_dict(sd2)


def test_cumulative_average_with_momentum_none():
    """momentum=None: running statistics are the plain average of the batch statistics."""
    m = bnlab.BatchNorm1d(3, momentum=None)
    xs = [torch.randn(10, 3, dtype=torch.float64) * (i + 1) for i in range(5)]
    m.double()
    for x in xs:
        m(x)
    torch.testing.assert_close(m.running_mean, torch.stack([x.mean(0) for x in xs]).mean(0))
    torch.testing.assert_close(m.running_var, torch.stack([x.var(0) for x in xs]).mean(0))
    assert int(m.num_batches_tracked) == 5


def test_unbiased_running_var_biased_normalization():
    """Alg. 1 normalizes with the biased σ²_B; Alg. 2 stores the unbiased m/(m−1)·σ²_B."""
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    m = bnlab.BatchNorm1d(2, momentum=1.0, affine=False).double()
    y = m(x)
    torch.testing.assert_close(m.running_var, x.var(dim=(0, 2), unbiased=True))
    biased = x.var(dim=(0, 2), unbiased=False).view(1, 2, 1)
    torch.testing.assert_close(y, (x - x.mean(dim=(0, 2), keepdim=True)) / torch.sqrt(biased + 1e-5))


def test_reset_and_repr():
    m = _trained(bnlab.BatchNorm2d, (3, 4, 2, 2), {})
    m.reset_running_stats()
    assert torch.equal(m.running_mean, torch.zeros(4)) and torch.equal(m.running_var, torch.ones(4))
    assert int(m.num_batches_tracked) == 0
    m.reset_parameters()
    assert torch.equal(m.weight, torch.ones(4))
    for flags in FLAGS:
        # the repr is torch's with the implementation named
        assert repr(bnlab.BatchNorm2d(4, **flags)) == "bnlab." + repr(torch.nn.BatchNorm2d(4, **flags))


def test_constructor_matches_torch():
    import inspect
    for name in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"):
        ours = inspect.signature(getattr(bnlab, name).__init__).parameters
        ref = inspect.signature(getattr(torch.nn, name).__init__).parameters
        assert list(ours) == list(ref)
        for p in ref:
            assert ours[p].default == ref[p].default and ours[p].kind == ref[p].kind, p


def test_device_dtype_factory_kwargs():
    m = bnlab.BatchNorm2d(3, device="cpu", dtype=torch.float64)
    assert m.weight.dtype == torch.float64 and m.running_mean.dtype == torch.float64
    assert m.num_batches_tracked.dtype == torch.long


def test_track_running_stats_false_uses_batch_stats_in_eval():
    m = bnlab.BatchNorm2d(3, track_running_stats=False).eval()
    x = torch.randn(4, 3, 2, 2) * 3 + 2
    y = m(x)
    assert y.mean(dim=(0, 2, 3)).abs().max() < 1e-5
