"""PyTorch's state-dict loading tests that involve batch norm (test/nn/test_load_state_dict.py).

Origin: pytorch/pytorch ``test/nn/test_load_state_dict.py`` (read at commit
14bf97ae6322923a44317378bdc4923fbecbd01c), class TestLoadStateDict: the tests whose models hold a
BatchNorm layer, re-expressed for pytest. ``@swap([True, False])`` becomes the ``swap`` parameter
(torch.__future__.set_swap_module_params_on_conversion). PyTorch is BSD-3-Clause licensed, see
LICENSE-PYTORCH. Every test runs under each binding of torch's BN names (peer_binding.py).
"""
from __future__ import annotations

from copy import deepcopy

import pytest
import torch
import torch.nn as nn
from torch.testing import assert_close

from peer_binding import binding  # noqa: F401 (the autouse fixture: every test on torch, bnlab, bnlab_ref)


@pytest.fixture(params=[False, True], ids=["assign", "swap"])
def swap(request):
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(request.param)
    yield request.param
    torch.__future__.set_swap_module_params_on_conversion(previous)


def _net():
    l = nn.Linear(5, 5)
    block = nn.Module()
    block.conv1 = nn.Conv2d(3, 3, 3, bias=True)
    block.conv2 = nn.Conv2d(3, 3, 3, bias=False)
    net = nn.Module()
    net.linear1 = l
    net.linear2 = l
    net.bn = nn.BatchNorm2d(2)
    net.block = block
    net.add_module("empty", None)
    return net


def test_load_state_dict(swap):
    net = _net()
    conv1_bias_dtype = net.block.conv1.bias.dtype
    state_dict = net.state_dict()
    state_dict.update({
        "linear1.weight": torch.ones(5, 5),
        "block.conv1.bias": torch.arange(1, 4, dtype=conv1_bias_dtype),
        "bn.running_mean": torch.randn(2),
    })
    # a DDP state_dict ("module." prefix) loads into the local model too
    ddp_state_dict = net.state_dict()
    ddp_state_dict.update({
        "module.linear1.weight": torch.ones(5, 5),
        "module.block.conv1.bias": torch.arange(1, 4, dtype=conv1_bias_dtype),
        "module.bn.running_mean": torch.randn(2),
    })
    torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(ddp_state_dict, "module.")
    for sd in [state_dict, ddp_state_dict]:
        incompatible = net.load_state_dict(sd)
        assert len(incompatible.missing_keys) == 0 and len(incompatible.unexpected_keys) == 0
        assert "Incompatible" not in str(incompatible)
        assert_close(net.linear1.weight, sd["linear1.weight"], check_dtype=False)
        assert_close(net.block.conv1.bias, sd["block.conv1.bias"])
        assert_close(net.bn.running_mean, sd["bn.running_mean"])

    state_dict = net.state_dict()
    state_dict.update({"extra": torch.ones(5)})
    with pytest.raises(RuntimeError):
        net.load_state_dict(state_dict)
    incompatible = net.load_state_dict(state_dict, strict=False)
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == ["extra"]
    assert "Incompatible" in str(incompatible)

    state_dict = net.state_dict()
    state_dict.update({"extra.param": torch.ones(5)})
    with pytest.raises(RuntimeError):
        net.load_state_dict(state_dict)
    incompatible = net.load_state_dict(state_dict, strict=False)
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == ["extra.param"]

    state_dict = net.state_dict()
    del state_dict["linear1.weight"]
    with pytest.raises(RuntimeError):
        net.load_state_dict(state_dict)
    incompatible = net.load_state_dict(state_dict, strict=False)
    assert incompatible.missing_keys == ["linear1.weight"] and incompatible.unexpected_keys == []
    state_dict.update({"extra.param": torch.ones(5)})
    with pytest.raises(RuntimeError):
        net.load_state_dict(state_dict)
    incompatible = net.load_state_dict(state_dict, strict=False)
    assert incompatible.missing_keys == ["linear1.weight"]
    assert incompatible.unexpected_keys == ["extra.param"]

    state_dict = net.state_dict()
    state_dict.update({"bn.running_mean": torch.rand(14, 4)})  # wrong size: refused even when not strict
    with pytest.raises(RuntimeError):
        net.load_state_dict(state_dict)
    with pytest.raises(RuntimeError):
        net.load_state_dict(state_dict, strict=False)

    state_dict = net.state_dict()
    old_state_dict = deepcopy(state_dict)
    state_dict = {
        "linear1.weight": torch.ones(5, 5),
        "block.conv1.bias": torch.arange(1, 4, dtype=conv1_bias_dtype),
        "bn.running_mean": torch.randn(2),
        "nonexistent_key": torch.rand(3),
    }
    net.load_state_dict(state_dict, strict=False)
    assert_close(net.linear1.weight, state_dict["linear1.weight"], check_dtype=False)
    assert_close(net.block.conv1.bias, state_dict["block.conv1.bias"])
    assert_close(net.bn.running_mean, state_dict["bn.running_mean"])
    new_state_dict = net.state_dict()
    for key in ("linear1.weight", "block.conv1.bias", "bn.running_mean"):
        del old_state_dict[key]
    for key, value in old_state_dict.items():
        assert value.equal(new_state_dict[key]), key


def test_load_state_dict_BC(swap):
    # BatchNorm's version 2 added num_batches_tracked: older (or unversioned) dicts load with it at 0
    bn = nn.BatchNorm2d(3)
    state_dict = bn.state_dict()
    del state_dict["num_batches_tracked"]
    state_dict._metadata[""]["version"] = 1
    bn.load_state_dict(state_dict)
    assert bn.num_batches_tracked.dtype == torch.long
    assert bn.num_batches_tracked.item() == 0
    del state_dict._metadata[""]["version"]
    bn.load_state_dict(state_dict)
    assert bn.num_batches_tracked.dtype == torch.long
    assert bn.num_batches_tracked.item() == 0


class _LinearBN(torch.nn.Module):
    def __init__(self, with_x=False):
        super().__init__()
        self.fc1 = nn.Linear(3, 5)
        self.bn = nn.BatchNorm1d(5)
        if with_x:
            self.x = nn.Parameter(torch.rand(5), requires_grad=False)

    def forward(self, input):
        out = self.bn(self.fc1(input))
        return out + self.x if hasattr(self, "x") else out


@pytest.mark.parametrize("keep_vars", [True, False])
def test_load_state_dict_assign_meta(swap, keep_vars):
    net = _LinearBN(with_x=True)
    state_dict = net.state_dict(keep_vars=keep_vars)
    for v in state_dict.values():
        v.requires_grad_(False)
    with torch.device("meta"):
        net_meta = _LinearBN(with_x=True)
    old = net_meta.state_dict(keep_vars=True)
    net_meta.load_state_dict(state_dict, assign=True)
    # parameters and persistent buffers were assigned (fc1/bn keys live in submodules)
    new = net_meta.state_dict(keep_vars=True)
    for key in state_dict.keys():
        if key in net_meta._parameters:
            if keep_vars and not swap:
                assert state_dict[key] is new[key]
            elif swap:
                assert new[key] is old[key]
            else:
                assert new[key] is not old[key]
            assert old[key].requires_grad == new[key].requires_grad
            assert_close(state_dict[key], new[key])
        elif key in net_meta._buffers and key not in net_meta._non_persistent_buffers_set:
            assert state_dict[key] is new[key]
    # parameter and buffer order is kept
    for (n1, _), (n2, _) in zip(net.named_parameters(), net_meta.named_parameters()):
        assert n1 == n2
    for (n1, _), (n2, _) in zip(net.named_buffers(), net_meta.named_buffers()):
        assert n1 == n2
    t = torch.randn(4, 3)
    assert_close(net(t), net_meta(t.clone()))


def test_load_state_dict_assign_with_optimizer(swap):
    net = _LinearBN()
    opt = torch.optim.Adam(net.parameters(), lr=1000)
    x = torch.randn(4, 3)
    num_iters = 3
    for _ in range(num_iters):
        opt.zero_grad()
        net(x).sum().backward()
        opt.step()
    opt_state_dict = deepcopy(opt.state_dict())
    net_state_dict = deepcopy(net.state_dict())
    with torch.device("meta"):
        net_meta = _LinearBN()
    net_meta.load_state_dict(net_state_dict, assign=True)
    # with assign=True the optimizer is made only after loading
    opt2 = torch.optim.Adam(net_meta.parameters(), lr=1000)
    opt2.load_state_dict(opt_state_dict)
    y = x.clone()
    for _ in range(num_iters):
        opt.zero_grad()
        net(x).sum().backward()
        opt.step()
        opt2.zero_grad()
        net_meta(y).sum().backward()
        opt2.step()
    assert_close(opt.state_dict(), opt2.state_dict())
    assert_close(net.state_dict(), net_meta.state_dict())


def test_load_state_dict_assign_shape_stride(swap):
    net = _LinearBN()
    state_dict = net.state_dict()
    state_dict["fc1.weight"] = torch.randn(3, 5).transpose(0, 1)  # another stride is fine
    net2 = _LinearBN()
    net2.load_state_dict(state_dict, strict=False, assign=True)
    state_dict["fc1.weight"] = torch.randn(2, 4)
    with pytest.raises(RuntimeError, match="size mismatch for fc1.weight: copying a param with shape"):
        net2.load_state_dict(state_dict, strict=False, assign=True)
