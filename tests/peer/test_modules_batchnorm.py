"""PyTorch's generic module tests (test/test_modules.py) on the module_db entries for BatchNorm1d/2d/3d.

Origin: ``TestModule`` and ``TestModuleCPUOnly`` of ``test/test_modules.py`` in PyTorch (read at
cyyever/pytorch commit 3708c33c7424656640eac0ed4383b47d2e605214, a fork of pytorch/pytorch; the copy of
pytorch/pytorch in the reference store predates the training parameter), re-expressed as pytest functions
on the CPU. The inputs are PyTorch's own: ``module_db`` and its ``module_inputs_torch_nn_BatchNorm*d`` /
``module_error_inputs_torch_nn_BatchNorm1d_2d_3d`` functions, imported from the installed
``torch.testing._internal.common_modules`` (torch 2.13.0, git cf30153c4c131c8164ee7798e5022d810682e2cb).
``@modules(module_db)`` becomes the ``name`` x ``training`` x ``dtype`` grid (BN's dtypes: float32 and
float64; test_grad/test_gradgrad float64 only; test_to/test_to_empty float32 only, as there).
PyTorch is BSD-3-Clause licensed, see LICENSE-PYTORCH; README.md lists what is left out and why.

Every test runs under each binding (peer_binding.py). module_db gives BN no ``reference_fn``, so
test_forward adds one: torch's own layer holding the same state.
"""
from __future__ import annotations

import copy
import tempfile
from itertools import chain, product
from operator import methodcaller

import pytest
import torch
from torch._subclasses.meta_utils import assert_metadata_eq
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db
from torch.testing._internal.common_utils import TestCase, freeze_rng_state, gradcheck, gradgradcheck

from peer_binding import TORCH, torch_oracle, binding  # noqa: F401 (the autouse fixture)

NAMES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
INFO = {name: next(info for info in module_db if info.module_cls is TORCH[name]) for name in NAMES}
_ASSERTS = TestCase()  # PyTorch's assertEqual (its tolerances, lists and dicts), as test_modules.py uses it

module_name = pytest.mark.parametrize("name", NAMES)
training_mode = pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
float_dtypes = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])


def bound_info(name):
    """The module_db entry with ``module_cls`` read through the (possibly rebound) torch name."""
    info = copy.copy(INFO[name])
    info.module_cls = getattr(torch.nn, name)
    return info


def samples(info, dtype, training, requires_grad=False, device="cpu"):
    return info.module_inputs_func(info, device=device, dtype=dtype, requires_grad=requires_grad,
                                   training=training)


def build(info, sample, dtype, training):
    m = info.module_cls(*sample.constructor_input.args, **sample.constructor_input.kwargs)
    m.to("cpu").to(dtype)
    m.train(training)
    return m


def assert_params_and_buffers(m, device, dtype):
    """_assert_module_parameters_and_buffer_are: device everywhere, dtype on the floating-point ones."""
    for name, t in chain(m.named_parameters(), m.named_buffers()):
        assert t.device == torch.device(device), name
        if t.dtype.is_floating_point:
            assert t.dtype == dtype, name


@module_name
@training_mode
@float_dtypes
def test_forward(name, training, dtype):
    info = bound_info(name)
    to_dtype = {torch.float32: methodcaller("float"), torch.float64: methodcaller("double")}
    for sample in samples(info, dtype, training):
        with freeze_rng_state():
            m = build(info, sample, dtype, training)
            twin = TORCH[name](*sample.constructor_input.args, **sample.constructor_input.kwargs).to(dtype)
            twin.load_state_dict(m.state_dict())
            twin.train(training)
            args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
            outputs = m(*args, **kwargs)
            # the reference module_db lacks for BN: torch's layer, same state, same input
            with torch_oracle():
                expected = twin(*args, **kwargs)
            _ASSERTS.assertEqual(outputs, expected)
            _ASSERTS.assertEqual(m.state_dict(), twin.state_dict())
            # the .float()/.double() methods convert every parameter and buffer
            to_dtype[dtype](m)
            m(*args, **kwargs)
            assert_params_and_buffers(m, "cpu", dtype)


@module_name
@training_mode
@float_dtypes
def test_factory_kwargs(name, training, dtype):
    info = bound_info(name)
    for sample in samples(info, dtype, training):
        args, kwargs = sample.constructor_input.args, dict(sample.constructor_input.kwargs)
        kwargs.update({"device": "cpu", "dtype": dtype})
        m = info.module_cls(*args, **kwargs)
        m.train(training)
        assert_params_and_buffers(m, "cpu", dtype)
        assert len(list(m.parameters())) + len(list(m.buffers())) > 0  # BN creates both, so the check applies


@module_name
@training_mode
@float_dtypes
def test_repr(name, training, dtype):
    info = bound_info(name)
    for sample in samples(info, dtype, training):
        m = build(info, sample, dtype, training)
        m.__repr__()
        str(m)


@module_name
@training_mode
@float_dtypes
def test_save_load(name, training, dtype):
    info = bound_info(name)
    for sample in samples(info, dtype, training):
        with freeze_rng_state():
            m = build(info, sample, dtype, training)
            sd = m.state_dict()
            args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
            output = m(*args, **kwargs)
            with tempfile.TemporaryFile() as f:
                torch.save(m, f)
                f.seek(0)
                # a whole module is a pickle: only this test's own temporary file is loaded so
                m_copy = torch.load(f, weights_only=False)
                _ASSERTS.assertEqual(output, m_copy(*args, **kwargs))
            with tempfile.TemporaryFile() as f:
                torch.save(sd, f)
                f.seek(0)
                _ASSERTS.assertEqual(torch.load(f), sd)
                f.seek(0)
                _ASSERTS.assertEqual(torch.load(f, weights_only=True), sd)


def _non_contiguous(obj):
    if isinstance(obj, tuple):
        return tuple(_non_contiguous(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _non_contiguous(v) for k, v in obj.items()}
    if not isinstance(obj, torch.Tensor) or obj.dim() == 0:
        return obj
    out = torch.repeat_interleave(obj, 2, dim=-1)[..., ::2].detach()
    out.requires_grad = obj.requires_grad
    return out


@module_name
@training_mode
@float_dtypes
def test_non_contiguous_tensors(name, training, dtype):
    info = bound_info(name)
    for sample in samples(info, dtype, training, requires_grad=True):
        input_args, input_kwargs = sample.forward_input.args, sample.forward_input.kwargs
        m = build(info, sample, dtype, training)
        for t in input_args:
            t.retain_grad()
        with freeze_rng_state():
            default_output = m(*input_args, **input_kwargs)
            grad_output = default_output.clone().detach_().normal_()
            default_output.backward(grad_output, retain_graph=True)
        default_input_grads = copy.deepcopy([t.grad for t in input_args])
        default_param_grad = copy.deepcopy([p.grad for p in m.parameters()])

        nc_input_args = _non_contiguous(input_args)
        nc_grad_output = _non_contiguous(grad_output)
        for in_args, g_out in product([input_args, nc_input_args], [grad_output, nc_grad_output]):
            g_out_copy = copy.deepcopy(g_out)
            for t in in_args:
                t.grad = None
            for p in m.parameters():
                p.grad = None
            with freeze_rng_state():
                out = m(*in_args, **input_kwargs)
                out.backward(g_out_copy, retain_graph=True)
            _ASSERTS.assertEqual(out, default_output)
            _ASSERTS.assertEqual([t.grad for t in in_args], default_input_grads, atol=1e-4, rtol=0)
            _ASSERTS.assertEqual([p.grad for p in m.parameters()], default_param_grad)


def _gradients(name, training, check):
    """_test_gradients_helper: the total derivative, then each parameter's partial one (input + that parameter)."""
    info = bound_info(name)
    for sample in samples(info, torch.float64, training, requires_grad=True):
        m = build(info, sample, torch.float64, training)
        params = tuple(m.parameters())
        input_args = sample.forward_input.args

        def fn(*flat):
            with freeze_rng_state():
                return m(*flat[:len(input_args)])

        def do_check():
            flat = input_args + params
            assert check(fn, flat, nondet_tol=0.0, fast_mode=info.gradcheck_fast_mode), sample.desc

        do_check()
        old = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad = False
        for p, was in zip(params, old):
            p.requires_grad = was
            do_check()
            p.requires_grad = False


@module_name
@training_mode
def test_grad(name, training):
    _gradients(name, training, gradcheck)


@module_name
@training_mode
def test_gradgrad(name, training):
    assert INFO[name].supports_gradgrad
    _gradients(name, training, gradgradcheck)


def _to_mem_format(fmt, args):
    def one(t):
        if (fmt == torch.channels_last and t.dim() != 4) or (fmt == torch.channels_last_3d and t.dim() != 5):
            return t.detach().clone().requires_grad_(t.requires_grad)
        return t.clone().to(memory_format=fmt).detach().requires_grad_(t.requires_grad)
    return tuple(one(t) for t in args)


def _check_out_mem_format(outputs, input_fmt, module_fmt, affects_out):
    for out in outputs:
        d = out.dim()
        if d == 4 and (input_fmt == torch.channels_last or (module_fmt == torch.channels_last and affects_out)):
            assert out.numel() == 0 or out.is_contiguous(memory_format=torch.channels_last)
        elif d == 5 and (input_fmt == torch.channels_last_3d
                         or (module_fmt == torch.channels_last_3d and affects_out)):
            assert out.numel() == 0 or out.is_contiguous(memory_format=torch.channels_last_3d)
        else:
            assert out.is_contiguous()


@module_name
@training_mode
@float_dtypes
def test_memory_format(name, training, dtype):
    info = bound_info(name)
    affects_out = info.module_memformat_affects_out
    for sample in samples(info, dtype, training, requires_grad=True):
        dims = {t.dim() for t in sample.forward_input.args}
        if 4 in dims:
            input_fmts = [torch.contiguous_format, torch.channels_last]
            module_fmts = [torch.preserve_format, torch.contiguous_format, torch.channels_last]
        elif 5 in dims:
            input_fmts = [torch.contiguous_format, torch.channels_last_3d]
            module_fmts = [torch.preserve_format, torch.contiguous_format, torch.channels_last_3d]
        else:
            input_fmts, module_fmts = [torch.contiguous_format], [torch.preserve_format, torch.contiguous_format]
        with freeze_rng_state():
            m = build(info, sample, dtype, training)
            args = sample.forward_input.args
            desired = m(*args)
            if training:
                params = tuple(m.parameters())
                ref_inputs = tuple(t for t in args + params if t.requires_grad)
                ref_grad_out = torch.rand_like(desired)
                ref_grads = torch.autograd.grad(desired, ref_inputs, grad_outputs=ref_grad_out)
            for input_fmt in input_fmts:
                d_args = _to_mem_format(input_fmt, args)
                for module_fmt in module_fmts:
                    m.to(memory_format=module_fmt)
                    out = m(*d_args)
                    if input_fmt != torch.contiguous_format or module_fmt != torch.contiguous_format:
                        _ASSERTS.assertEqual(out, desired)
                    _check_out_mem_format([out], input_fmt, module_fmt, affects_out)
                    if training:
                        params = tuple(m.parameters())
                        diff_inputs = tuple(t for t in d_args + params if t.requires_grad)
                        grad_out = torch.empty_like(out).copy_(ref_grad_out)
                        grads = torch.autograd.grad(out, diff_inputs, grad_outputs=grad_out)
                        if input_fmt != torch.contiguous_format or module_fmt != torch.contiguous_format:
                            _ASSERTS.assertEqual(grads, ref_grads)
                        _check_out_mem_format(grads, input_fmt, module_fmt, affects_out)


@module_name
@float_dtypes
def test_if_train_and_eval_modes_differ(name, dtype):
    """train_eval_mode=TrainEvalMode.train_only there."""
    info = bound_info(name)
    for sample in samples(info, dtype, True):
        m = build(info, sample, dtype, True)
        delattr(m, "training")
        try:
            m(*sample.forward_input.args, **sample.forward_input.kwargs)
        except AttributeError as e:
            if "'training'" not in str(e):
                raise
            assert info.train_and_eval_differ, f"{name}: training mode affects forward, but train_and_eval_differ=False"


@module_name
@training_mode
@float_dtypes
def test_errors(name, training, dtype):
    info = bound_info(name)
    errors = info.module_error_inputs_func(info, device="cpu", dtype=dtype, requires_grad=False, training=training)
    assert errors
    for error in errors:
        sample = error.module_error_input
        c_args, c_kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
        if error.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
            with pytest.raises(error.error_type, match=error.error_regex):
                info.module_cls(*c_args, **c_kwargs)
        elif error.error_on == ModuleErrorEnum.FORWARD_ERROR:
            m = info.module_cls(*c_args, **c_kwargs)  # as there: the module stays in its default (training) mode
            with pytest.raises(error.error_type, match=error.error_regex):
                m(*sample.forward_input.args, **sample.forward_input.kwargs)
        else:
            raise NotImplementedError(f"Unknown error type {error.error_on}")


@pytest.fixture
def swap_setting():
    """wrapSwapTensorsTest: restore torch.__future__'s swap flag after the test."""
    previous = torch.__future__.get_swap_module_params_on_conversion()
    yield
    torch.__future__.set_swap_module_params_on_conversion(previous)


@module_name
@training_mode
@pytest.mark.parametrize("swap", [True, False], ids=["swap", "noswap"])
@pytest.mark.parametrize("set_grad", [True, False], ids=["grad", "nograd"])
def test_to(name, training, swap, set_grad, swap_setting):
    info = bound_info(name)
    device, dtype = "cpu", torch.float32
    torch.__future__.set_swap_module_params_on_conversion(swap)
    for sample in samples(info, dtype, training):
        m = info.module_cls(*sample.constructor_input.args, **sample.constructor_input.kwargs)
        # set up parameters without Module.to, the method under test
        for n, p in list(m.named_parameters(recurse=False)):
            new_p = torch.nn.Parameter(p.detach().clone().to(device, dtype))
            setattr(m, n, new_p)
            if set_grad:
                new_p.grad = torch.randn_like(new_p)
        for n, b in list(m.named_buffers(recurse=False)):
            setattr(m, n, b.detach().clone().to(device, dtype))
        has_params = len(list(m.parameters())) > 0
        if swap and not set_grad and has_params:
            out = m(*sample.forward_input.args, **sample.forward_input.kwargs)
            out.sum().backward()
            m.to(dtype=torch.half)
            m.to(dtype=torch.float32)
        prev_device, prev_dtype = device, dtype
        for device_, dtype_ in product(["cpu"], info.dtypes):
            g_no_swap = device_ == prev_device and dtype_ == prev_dtype
            prev_device, prev_dtype = device_, dtype_
            p_ids_before = [id(p) for p in m.parameters()]
            p_cdatas_before = [p._cdata for p in m.parameters()]
            if set_grad:
                g_ids_before = [id(p.grad) for p in m.parameters()]
                g_cdatas_before = [p.grad._cdata for p in m.parameters()]
            m.to(device=device_, dtype=dtype_)
            assert all(isinstance(p, torch.nn.Parameter) for p in m.parameters())
            assert all(p.device.type == device_ and p.dtype == dtype_ for p in m.parameters())
            p_ids_after = [id(p) for p in m.parameters()]
            p_cdatas_after = [p._cdata for p in m.parameters()]
            if set_grad:
                assert all(p.grad.device.type == device_ and p.grad.dtype == dtype_ for p in m.parameters())
                g_ids_after = [id(p.grad) for p in m.parameters()]
                g_cdatas_after = [p.grad._cdata for p in m.parameters()]
            if swap:
                # same Python object, swapped storage
                assert p_ids_before == p_ids_after
                assert all(a != b for a, b in zip(p_cdatas_before, p_cdatas_after))
                if set_grad:
                    assert all(a == b if g_no_swap else a != b for a, b in zip(g_cdatas_before, g_cdatas_after))
            else:
                # .data assignment: object and storage handle kept
                assert p_cdatas_before == p_cdatas_after and p_ids_before == p_ids_after
                if set_grad:
                    assert g_cdatas_before == g_cdatas_after and g_ids_before == g_ids_after


@module_name
@training_mode
@pytest.mark.parametrize("swap", [True, False], ids=["swap", "noswap"])
def test_to_empty(name, training, swap, swap_setting):
    info = bound_info(name)
    dtype = torch.float32
    with torch.device("meta"):
        meta_samples = samples(info, dtype, training, device=None)
    torch.__future__.set_swap_module_params_on_conversion(swap)
    for sample in meta_samples:
        with torch.device("meta"):
            m = info.module_cls(*sample.constructor_input.args, **sample.constructor_input.kwargs)
        p_ids_before = [id(p) for p in m.parameters()]
        p_cdatas_before = [p._cdata for p in m.parameters()]
        m.to_empty(device=torch.device("cpu"))
        assert all(isinstance(p, torch.nn.Parameter) for p in m.parameters())
        assert all(p.device == torch.device("cpu") and p.dtype == dtype for p in m.parameters())
        p_ids_after = [id(p) for p in m.parameters()]
        p_cdatas_after = [p._cdata for p in m.parameters()]
        if swap:
            assert p_ids_before == p_ids_after
            assert all(a != b for a, b in zip(p_cdatas_before, p_cdatas_after))
        else:
            # meta and cpu tensors have different shallow-copy types: new Parameters are assigned
            assert all(a != b for a, b in zip(p_ids_before, p_ids_after))
            assert all(a != b for a, b in zip(p_cdatas_before, p_cdatas_after))


@module_name
@training_mode
@float_dtypes
def test_device_ctx_init(name, training, dtype):
    """TestModuleCPUOnly.test_device_ctx_init."""
    info = bound_info(name)
    cpu_samples = samples(info, dtype, training)
    with torch.device("meta"):
        meta_samples = samples(info, dtype, training, device=None)
    for sample, sample_meta in zip(cpu_samples, meta_samples):
        m_cpu = info.module_cls(*sample.constructor_input.args, **sample.constructor_input.kwargs)
        with torch.device("meta"):
            m = info.module_cls(*sample_meta.constructor_input.args, **sample_meta.constructor_input.kwargs)
        for p_meta, p_cpu in chain(zip(m.parameters(), m_cpu.parameters()), zip(m.buffers(), m_cpu.buffers())):
            assert p_meta.is_meta
            assert_metadata_eq(_ASSERTS.assertEqual, p_meta, p_cpu)
