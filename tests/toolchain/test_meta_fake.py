"""Forward on meta tensors, under FakeTensorMode and make_fx, train and eval, every layer.

Oracle: torch.nn.BatchNorm2d under the same mode (shapes, dtypes, strides of the
output), and for make_fx the traced graph run on real tensors against eager. The
non-finite guard must not read a value (``.item()``/``bool()``): it would raise here.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

from toolchain_models import KINDS, make_layer, randomize


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", KINDS)
def test_meta_device(kind, train):
    with torch.device("meta"):
        layer = make_layer(kind, 4).train(train)
        ref = nn.BatchNorm2d(4).train(train)
        x = torch.randn(8, 4, 5, 5).to(memory_format=torch.channels_last)
    y = layer(x)
    assert y.device.type == "meta" and y.shape == ref(x).shape and y.dtype == ref(x).dtype
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", KINDS)
def test_fake_tensor_mode(kind, train):
    with FakeTensorMode():
        layer = make_layer(kind, 4).train(train)
        x = torch.randn(8, 4, 5, 5, requires_grad=True)
        y = layer(x)
        (y * y).sum().backward() if train else None
    assert type(y).__name__ == "FakeTensor" and tuple(y.shape) == (8, 4, 5, 5)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", KINDS)
def test_make_fx_graph_runs_like_eager(kind, train):
    torch.manual_seed(0)
    traced_layer = randomize(make_layer(kind, 4)).train(train)
    eager_layer = randomize(make_layer(kind, 4)).train(train)
    x = torch.randn(8, 4, 3, 3) + 1
    params = dict(traced_layer.named_parameters())
    buffers = {k: v.clone() for k, v in traced_layer.named_buffers()}

    def step(p, b, inp):
        return torch.func.functional_call(traced_layer, (p, b), (inp,))

    gm = make_fx(step, tracing_mode="fake")(params, buffers, x)
    # the trace ran on fake tensors: the real buffers are untouched
    assert int(buffers["num_batches_tracked"]) == 3
    torch.testing.assert_close(gm(params, buffers, x), eager_layer(x), rtol=1e-5, atol=1e-5)
    for k, v in eager_layer.named_buffers():                         # the graph updated them as eager did
        torch.testing.assert_close(buffers[k], v, rtol=1e-6, atol=1e-6, msg=k)


def test_guard_reads_ok_only_in_eager():
    """On a real non-finite batch eager counts it; on meta the same layer runs without reading."""
    import bnlab

    x = torch.randn(4, 3)
    x[0, 1] = float("nan")
    bn = bnlab.BatchNorm1d(3)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        bn(x)
    assert bn.skipped_batches == 1 and int(bn.num_batches_tracked) == 0
    meta = bnlab.BatchNorm1d(3, device="meta")
    meta(torch.randn(4, 3, device="meta"))
    assert meta.skipped_batches == 0
