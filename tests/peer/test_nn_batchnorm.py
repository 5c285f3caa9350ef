"""PyTorch's batch-norm tests from test/test_nn.py (TestNN and TestNNDeviceType), on the CPU.

Origin: pytorch/pytorch ``test/test_nn.py`` (read at commit 74f2fa66feec00335f72813782f4802e80bff4cb);
each test below carries the name of the one it re-expresses, with its checks kept and unittest's
assertions written as pytest/torch.testing ones. Device-parametrized tests run on ``cpu`` only.
PyTorch is BSD-3-Clause licensed, see LICENSE-PYTORCH; README.md lists what is left out and why.

Every test runs under each binding of torch's names (peer_binding.py): ``nn.BatchNorm*d``,
``nn.SyncBatchNorm``, ``F.batch_norm`` and ``torch.batch_norm`` are looked up at call time, as
in the original tests, so under ``bnlab`` they are bnlab's.
"""
from __future__ import annotations

from collections import OrderedDict
from copy import deepcopy
from functools import partial

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
import torch.nn.functional as F
from torch.nn import Parameter
from torch.testing import assert_close

from peer_binding import binding  # noqa: F401 (the autouse fixture: every test on torch, bnlab, bnlab_ref)
from torch.testing._internal.common_nn import _test_module_empty_input
from torch.testing._internal.common_utils import TestCase, gradcheck, gradgradcheck



_ASSERTS = TestCase()  # PyTorch's assertEqual, for the helpers of common_nn that take a test case


# ---- TestNN -------------------------------------------------------------------------------------

def _nhwc_case(mod_name, size, dtype, mixed_dtype, fmt, precision):
    mod = getattr(nn, mod_name)
    channels = size[1]
    x = torch.randn(size, dtype=dtype, requires_grad=True)
    x = x.contiguous(memory_format=fmt).to(dtype)
    x.retain_grad()
    grad = torch.randn(size, dtype=dtype).contiguous(memory_format=fmt)
    bn = mod(channels).to(dtype)
    bn.weight.data.uniform_()
    bn.bias.data.uniform_()
    ref_x = x.detach().clone().contiguous().requires_grad_(True)
    ref_grad = grad.detach().clone().contiguous()
    ref_bn = mod(channels).to(dtype)
    ref_bn.load_state_dict(bn.state_dict())
    if mixed_dtype:
        bn.float()
        ref_bn.float()
    out = bn(x)
    out.backward(grad)
    ref_out = ref_bn(ref_x)
    ref_out.backward(ref_grad)
    assert out.is_contiguous(memory_format=fmt)
    assert ref_out.is_contiguous()
    assert_close(out, ref_out)
    kw = {} if precision is None else dict(atol=precision, rtol=precision)
    assert_close(bn.weight.grad, ref_bn.weight.grad, **kw)
    assert_close(bn.bias.grad, ref_bn.bias.grad)
    assert_close(x.grad, ref_x.grad)


@pytest.mark.parametrize("dtype", [torch.float, torch.bfloat16, torch.float16], ids=str)
def test_batchnorm_nhwc_cpu(dtype):
    """test_batchnorm_nhwc_cpu: channels-last input gives the contiguous result (NC11 and N1HW, mixed dtype)."""
    for mixed in ([False] if dtype == torch.float else [False, True]):
        # the original compares the 2-D weight gradient at float32's default tolerance, which holds for
        # its fixed seed only (the channels-last reduction order differs); 1e-4, as its 3-D half uses
        for shape in [(4, 8, 10, 10), (4, 1, 9, 9), (4, 9, 1, 1)]:
            _nhwc_case("BatchNorm2d", shape, dtype, mixed, torch.channels_last, 1e-4 if mixed else None)
        precision = 1e-4 if mixed else {torch.float: 1e-4, torch.bfloat16: 1e-4, torch.float16: None}[dtype]
        for shape in [(4, 8, 2, 10, 10), (4, 1, 2, 9, 9), (4, 9, 1, 1, 1)]:
            _nhwc_case("BatchNorm3d", shape, dtype, mixed, torch.channels_last_3d, precision)


def _half_overflow_case(mod_name, size, param_dtype, fwd_format, bwd_format):
    mod = getattr(nn, mod_name)
    channels = size[1]
    x = torch.randn(size, dtype=torch.half).contiguous(memory_format=fwd_format).requires_grad_(True)
    bn = mod(channels).to(param_dtype)
    out = bn(x)
    ref_x = x.detach().clone().requires_grad_(True)
    ref_bn = mod(channels).to(torch.float)
    ref_bn.load_state_dict(bn.to(torch.float).state_dict())
    ref_out = ref_bn(ref_x)
    assert not out.isinf().any() and not out.isnan().any()
    assert_close(out, ref_out, check_dtype=False)
    if param_dtype != torch.half:
        g = torch.empty(size=ref_out.shape).uniform_(0, 1).to(dtype=torch.half).contiguous(memory_format=bwd_format)
        out.backward(g)
        ref_out.backward(g.clone())
        assert not x.grad.isinf().any() and not x.grad.isnan().any()
        assert_close(x.grad, ref_x.grad)


def test_batchnorm_half_overflow():
    """test_batchnorm_half_overflow, at smaller sizes (the original uses up to 80-million-element tensors).

    What it is about is kept: float16 input whose per-channel sums overflow float16 (65536 values of
    N(0, 1) per channel: the sum of squares is far above 65504), computed without inf/NaN and equal to the
    float32 computation, with half and float parameters, in both layouts and every forward/backward pair.
    """
    for fmt in [torch.contiguous_format, torch.channels_last]:
        _half_overflow_case("BatchNorm2d", (4, 2, 128, 128), torch.half, fmt, fmt)
    for fmt in [torch.contiguous_format, torch.channels_last_3d]:
        _half_overflow_case("BatchNorm3d", (4, 2, 16, 32, 32), torch.half, fmt, fmt)
    for fwd in [torch.contiguous_format, torch.channels_last]:
        for bwd in [torch.contiguous_format, torch.channels_last]:
            _half_overflow_case("BatchNorm2d", (4, 3, 32, 32), torch.float, fwd, bwd)
    for fwd in [torch.contiguous_format, torch.channels_last_3d]:
        for bwd in [torch.contiguous_format, torch.channels_last_3d]:
            _half_overflow_case("BatchNorm3d", (4, 4, 8, 16, 16), torch.float, fwd, bwd)


@pytest.mark.parametrize("bn_module", ["BatchNorm2d", "SyncBatchNorm"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_batchnorm_non_contig_cpu(bn_module, dtype):
    """test_batchnorm_non_contig_cpu: a permuted (channels-last) input in eval, float and mixed low precision."""
    cls = getattr(nn, bn_module)
    x = torch.arange(6, dtype=torch.float).reshape(1, 3, 2, 1).permute(0, 2, 1, 3)
    bn = cls(2).float().eval()
    bn.weight.data.uniform_()
    bn.bias.data.uniform_()
    ref_x = x.detach().clone().contiguous()
    ref_bn = nn.BatchNorm2d(2).float().eval()
    ref_bn.load_state_dict(bn.state_dict())
    out = bn(x)
    ref_out = ref_bn(ref_x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert ref_out.is_contiguous()
    assert_close(out, ref_out)

    x_low = torch.arange(24, dtype=dtype).reshape(1, 3, 2, 4).permute(0, 2, 1, 3)
    x_f = x_low.float()
    bn_mix = cls(2).float().eval()
    ref_bn_f = deepcopy(bn_mix)
    out_low = bn_mix(x_low)
    ref_out_low = ref_bn_f(x_f)
    assert_close(ref_out_low, out_low.float(), atol=0.05, rtol=0.05)


def test_batchnorm_raises_error_if_less_than_one_value_per_channel():
    x = torch.rand(10)[None, :, None]
    with pytest.raises(ValueError):
        torch.nn.BatchNorm1d(10)(x)


def test_batchnorm_raises_error_if_running_mean_is_not_same_size_as_input():
    x = torch.rand(2, 10)
    running_var = torch.rand(10)
    for size in [9, 11]:
        with pytest.raises(RuntimeError):
            F.batch_norm(x, torch.rand(size), running_var)


def test_batchnorm_raises_error_if_running_var_is_not_same_size_as_input():
    x = torch.rand(2, 10)
    running_mean = torch.rand(10)
    for size in [9, 11]:
        with pytest.raises(RuntimeError):
            F.batch_norm(x, running_mean, torch.rand(size))


def test_batchnorm_raises_error_if_weight_is_not_same_size_as_input():
    x = torch.rand(2, 10)
    running_mean, running_var = torch.rand(10), torch.rand(10)
    for size in [9, 11]:
        with pytest.raises(RuntimeError):
            F.batch_norm(x, running_mean, running_var, weight=Parameter(torch.rand(size)))


def test_batchnorm_raises_error_if_bias_is_not_same_size_as_input():
    x = torch.rand(2, 10)
    running_mean, running_var = torch.rand(10), torch.rand(10)
    for size in [9, 11]:
        with pytest.raises(RuntimeError):
            F.batch_norm(x, running_mean, running_var, bias=Parameter(torch.rand(size)))


def test_batchnorm_raises_error_if_running_var_or_running_mean_have_forward_grad():
    args = (torch.randn(3, 2, 5), torch.randn(2), torch.randn(2))  # input, running_mean, running_var
    fn = partial(F.batch_norm, training=False, momentum=-1.2)
    for dual_indices in ((0,), (1,), (1, 2), (0, 1), (0, 1, 2)):
        tangents = tuple(torch.rand_like(x) for x in args)
        with fwAD.dual_level():
            duals = [fwAD.make_dual(p, t) if i in dual_indices else p
                     for i, (p, t) in enumerate(zip(args, tangents))]
            msg = "batch_norm is not differentiable wrt running_mean and running_var"
            # the input needs a tangent, or the forward-mode rule does not run at all
            if (1 in dual_indices or 2 in dual_indices) and 0 in dual_indices:
                with pytest.raises(RuntimeError, match=msg):
                    fn(*duals)
            else:
                fn(*duals)


def test_batchnorm_buffer_update_when_stats_are_not_tracked():
    input_size = (32, 4)
    bn = nn.BatchNorm1d(input_size[1], track_running_stats=True)
    bn.track_running_stats = False  # buffers exist, and are used for nothing
    num_batches = bn.num_batches_tracked.clone()
    running_mean = bn.running_mean.clone()
    running_var = bn.running_var.clone()
    bn(torch.rand(input_size))
    assert torch.equal(num_batches, bn.num_batches_tracked)
    assert torch.equal(running_mean, bn.running_mean)
    assert torch.equal(running_var, bn.running_var)


def test_batchnorm_load_state_dict():
    bn = torch.nn.BatchNorm2d(3)
    assert_close(bn.state_dict()["num_batches_tracked"], torch.tensor(0))
    bn.num_batches_tracked = torch.tensor(10)
    assert_close(bn.state_dict()["num_batches_tracked"], torch.tensor(10))
    empty = OrderedDict()
    bn.load_state_dict(empty, strict=False)
    assert_close(bn.state_dict()["num_batches_tracked"], torch.tensor(10))
    # a meta num_batches_tracked missing from the loaded dict is still replaced by a real 0
    with torch.device("meta"):
        meta_bn = torch.nn.BatchNorm2d(3)
    assert meta_bn.num_batches_tracked.device == torch.device("meta")
    meta_bn.load_state_dict(empty, assign=True, strict=False)
    assert_close(meta_bn.state_dict()["num_batches_tracked"], torch.tensor(0))


def test_convert_sync_batchnorm():
    """test_convert_sync_batchnorm, on the CPU (the original moves the model to CUDA first)."""
    module = torch.nn.Sequential(torch.nn.BatchNorm1d(100), torch.nn.InstanceNorm1d(100))
    comp_module = torch.nn.Sequential(torch.nn.BatchNorm1d(100), torch.nn.InstanceNorm1d(100))
    comp_module.load_state_dict(module.state_dict())
    sync_bn_module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    children = list(sync_bn_module.children())
    assert children[0].__class__ is torch.nn.SyncBatchNorm
    assert children[1].__class__ is torch.nn.InstanceNorm1d
    for layer, converted in zip(comp_module.children(), sync_bn_module.children()):
        for key in layer.state_dict().keys():
            assert layer.state_dict()[key].device == converted.state_dict()[key].device
            assert_close(layer.state_dict()[key], converted.state_dict()[key])


def test_state_dict():
    """TestNN.test_state_dict: a net holding a BatchNorm2d; keys, metadata, and storage shared with the module."""
    l = nn.Linear(5, 5)
    block = nn.Module()
    block.conv = nn.Conv2d(3, 3, 3, bias=False)
    net = nn.Module()
    net.linear1 = l
    net.linear2 = l
    net.bn = nn.BatchNorm2d(2)
    net.block = block
    net.add_module("empty", None)
    state_dict = net.state_dict()
    assert len(state_dict) == 10
    assert len(state_dict._metadata) == 6
    for key in ("", "linear1", "linear2", "block", "block.conv", "bn"):
        assert key in state_dict._metadata
    for key in ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias", "block.conv.weight",
                "bn.weight", "bn.bias", "bn.running_var", "bn.running_mean", "bn.num_batches_tracked"):
        assert key in state_dict
    assert "block.conv.bias" not in state_dict
    assert not any(k.startswith("empty") for k in state_dict.keys())
    for k, v in state_dict.items():
        param = net
        for component in k.split("."):
            param = getattr(param, component)
            if isinstance(param, Parameter):
                param = param.data
        assert v.data_ptr() == param.data_ptr(), k


def test_fuse_module_eval_numerics():
    """TestFusionEval.test_fuse_module_eval_numerics: conv+BN folded by fuse_conv_bn_eval gives conv->BN.

    The original draws X, running_mean and running_var with hypothesis; here 10 seeded draws of the same
    shapes (running_var made positive, as a variance is), affine and non-affine BN.
    """
    for _ in range(10):
        inputs = torch.randn(5, 3, 5, 5, dtype=torch.double)
        running_mean = torch.randn(6, dtype=torch.double)
        running_var = torch.rand(6, dtype=torch.double) + 0.1
        conv_ref = torch.nn.Conv2d(3, 6, bias=True, kernel_size=(3, 3)).double()
        for affine in (True, False):
            bn_ref = torch.nn.BatchNorm2d(6, affine=affine).double()
            bn_ref.running_mean = running_mean.clone()
            bn_ref.running_var = running_var.clone()
            conv_ref.eval()
            bn_ref.eval()
            y_ref = bn_ref(conv_ref(inputs))
            fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv_ref, bn_ref)
            assert_close(y_ref, fused(inputs), msg="Conv+BN fusion results are off")


def test_fuse_conv_bn_requires_grad():
    """TestFusionUtils.test_fuse_conv_bn_requires_grad."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights
    conv = torch.nn.Conv2d(3, 3, 3)
    bn = torch.nn.BatchNorm2d(3)
    for w_rg in (True, False):
        for b_rg in (True, False):
            conv.weight.requires_grad = w_rg
            conv.bias.requires_grad = b_rg
            weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                bn.eps, bn.weight, bn.bias)
            assert weight.requires_grad == w_rg and bias.requires_grad == b_rg


def test_fuse_linear_bn_requires_grad():
    """TestFusionUtils.test_fuse_linear_bn_requires_grad."""
    from torch.nn.utils.fusion import fuse_linear_bn_weights
    linear = torch.nn.Linear(3, 3)
    bn = torch.nn.BatchNorm1d(3)
    for w_rg in (True, False):
        for b_rg in (True, False):
            linear.weight.requires_grad = w_rg
            linear.bias.requires_grad = b_rg
            weight, bias = fuse_linear_bn_weights(linear.weight, linear.bias, bn.running_mean, bn.running_var,
                                                  bn.eps, bn.weight, bn.bias)
            assert weight.requires_grad == w_rg and bias.requires_grad == b_rg


# ---- TestNNDeviceType, device="cpu" ---------------------------------------------------------------

def test_batchnorm_update_stats():
    module = nn.BatchNorm1d(3)
    data = torch.rand(4, 3)
    # training pass: every buffer moves
    old_mean, old_var = module.running_mean.clone(), module.running_var.clone()
    old_n = module.num_batches_tracked.clone()
    module(data)
    assert not torch.equal(old_mean, module.running_mean)
    assert not torch.equal(old_var, module.running_var)
    assert_close(old_n + 1, module.num_batches_tracked)
    # eval pass: none does
    module.eval()
    old_mean, old_var = module.running_mean.clone(), module.running_var.clone()
    old_n = module.num_batches_tracked.clone()
    module(data)
    assert_close(old_mean, module.running_mean)
    assert_close(old_var, module.running_var)
    assert_close(old_n, module.num_batches_tracked)


def test_batchnorm_grad():
    """_test_batchnorm_grad: gradcheck and gradgradcheck of F.batch_norm in float64, eval and training."""
    bs, n_feat, size_feat = 4, 5, 6
    dtype = torch.double
    x = torch.arange(bs * n_feat * size_feat, requires_grad=True, dtype=dtype).view(bs, n_feat, size_feat)
    weight = torch.arange(1, n_feat + 1, requires_grad=True, dtype=dtype)
    bias = torch.arange(n_feat, requires_grad=True, dtype=dtype)
    running_mean = 1 - torch.arange(n_feat, dtype=dtype)
    running_var = 2 * torch.arange(n_feat, dtype=dtype)
    for training in [False, True]:
        inputs = (x, running_mean, running_var, weight, bias, training, 0.1, 0.0001)
        assert gradcheck(F.batch_norm, inputs)
        assert gradgradcheck(F.batch_norm, inputs)


def _eval_case(ndim, dtype, module_dtype=None):
    module_dtype = module_dtype or dtype
    module = nn.BatchNorm1d(3).to(dtype=module_dtype)
    module.eval()
    data = torch.rand([3] * ndim, dtype=dtype, requires_grad=True)
    grad = torch.rand([3] * ndim, dtype=dtype)
    # 1st pass
    res1 = module(data)
    res1.backward(grad)
    grad1 = data.grad.clone()
    # 2nd pass
    data.grad.zero_()
    res2 = module(data)
    res2.backward(grad)
    grad2 = data.grad.clone()
    assert_close(res1, res2)
    assert_close(grad1, grad2)
    # without running statistics eval normalizes with the batch's own, like training
    module = nn.BatchNorm1d(3, track_running_stats=False).to(dtype=module_dtype)
    data = torch.rand(4, 3, dtype=dtype, requires_grad=True)
    grad = torch.rand(4, 3, dtype=dtype)
    res1 = module(data)
    res1.backward(grad)
    grad1 = data.grad.clone()
    module.eval()
    data.grad.zero_()
    res2 = module(data)
    res2.backward(grad)
    grad2 = data.grad.clone()
    assert_close(res1, res2)
    assert_close(grad1, grad2)


@pytest.mark.parametrize("ndim", [2, 3])
def test_batchnorm_eval(ndim):
    _eval_case(ndim, torch.float)


# the *_mixed tests are @onlyCUDA in test_nn.py; their CPU runs are kept here (they pass on torch's CPU kernels)
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.half], ids=str)
def test_batchnorm_eval_mixed(ndim, dtype):
    _eval_case(ndim, dtype, torch.float)


def _affine_case(ndim, dtype, module_dtype=None):
    module_dtype = module_dtype or dtype
    module = nn.BatchNorm1d(3, affine=False).to(dtype=module_dtype)
    module_affine = nn.BatchNorm1d(3, affine=True).to(dtype=module_dtype)
    with torch.no_grad():
        module_affine.weight.fill_(1.0)
        module_affine.bias.zero_()
    data = torch.rand([3] * ndim, dtype=dtype, requires_grad=True)
    grad = torch.ones_like(data, requires_grad=False)
    res1 = module_affine(data)
    res1.backward(grad)
    grad1 = data.grad.clone()
    data.grad.zero_()
    res2 = module(data)
    res2.backward(grad)
    grad2 = data.grad
    assert_close(res1, res2)
    assert_close(grad1, grad2)


@pytest.mark.parametrize("ndim", [2, 3])
def test_batchnorm_affine(ndim):
    _affine_case(ndim, torch.float)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.half], ids=str)
def test_batchnorm_affine_mixed(ndim, dtype):
    _affine_case(ndim, dtype, torch.float)


def _simple_average_case(dtype, module_dtype=None):
    module_dtype = module_dtype or dtype
    module = nn.BatchNorm1d(3, momentum=None).to(dtype=module_dtype)
    zeros = torch.zeros(3, dtype=module_dtype)
    ones = torch.ones(3, dtype=module_dtype)
    assert_close(module.running_mean, zeros)
    assert_close(module.running_var, ones)
    data1 = torch.rand(4, 3, dtype=dtype)
    data2 = torch.rand(4, 3, dtype=dtype)
    # 1st pass
    res1 = module(data1)
    running_mean1, running_var1 = module.running_mean.clone(), module.running_var.clone()
    assert not torch.equal(running_mean1, zeros) and not torch.equal(running_var1, ones)
    # 2nd pass, from fresh statistics
    module.reset_running_stats()
    res2 = module(data2)
    running_mean2, running_var2 = module.running_mean.clone(), module.running_var.clone()
    assert not torch.equal(running_mean2, zeros) and not torch.equal(running_var2, ones)
    # 3rd (combined) pass
    module.reset_running_stats()
    assert_close(module.running_mean, zeros)
    assert_close(module.running_var, ones)
    res3 = module(data1)
    res4 = module(data2)
    assert_close(res3, res1)
    assert_close(res4, res2)
    # momentum=None: the running statistics are the cumulative (simple) average of the batches'
    assert_close(module.running_mean, (running_mean1 + running_mean2) / 2)
    assert_close(module.running_var, (running_var1 + running_var2) / 2)


def test_batchnorm_simple_average():
    _simple_average_case(torch.float)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.half], ids=str)
def test_batchnorm_simple_average_mixed(dtype):
    _simple_average_case(dtype, torch.float)


def test_batchnorm_large_batch():
    """test_batchnorm_large_batch (CUDA-only there: a launch-size bug), on the CPU with a float64 oracle.

    The original only checks that forward and backward run. The oracle's tolerance is what torch's own
    float32 CPU kernel meets on one thread (its error on this 880 801-value channel is about 3e-4).
    """
    bn = nn.BatchNorm2d(1)
    data = torch.rand(880801, 1, 1, 1)
    bn(data).sum().backward()
    expected = (data.double() - data.double().mean()) / torch.sqrt(data.double().var(unbiased=False) + bn.eps)
    assert_close(bn(data).double(), expected, rtol=0, atol=1e-3)


def test_BatchNorm_empty():
    """test_BatchNorm_empty (float64), through common_nn's own _test_module_empty_input."""
    mod = torch.nn.BatchNorm2d(3)
    inp = torch.randn(0, 3, 2, 2, dtype=torch.double)
    _test_module_empty_input(_ASSERTS, mod, inp)
    assert_close(mod.running_mean, torch.tensor([0.0, 0, 0]))
    assert_close(mod.running_var, torch.tensor([1.0, 1, 1]))
    assert_close(mod.weight.grad, torch.tensor([0.0, 0, 0]))
    assert_close(mod.bias.grad, torch.tensor([0.0, 0, 0]))
