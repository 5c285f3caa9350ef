"""The bnlab operators against the reference and torch: every layout, dtype and activation.

Oracles: torch.nn.functional.batch_norm (+ torch's activations), the reference kernels
(plain torch ops), and float64 gradients of the plain definition.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

import bnlab
from bnlab import kernels as K
from bnlab.kernels import OPS
from conftest import forbid_torch_batchnorm, tolerances

LAYOUTS = [
    ((8, 3), None), ((5, 4, 7), None), ((4, 5, 3), "nlc"), ((3, 4, 1), None), ((2, 3, 4, 5), None),
    ((2, 3, 4, 5), torch.channels_last), ((3, 5, 1, 1), None), ((2, 3, 2, 3, 4), None),
    ((2, 3, 2, 3, 4), torch.channels_last_3d), ((4, 19, 33), None), ((3, 21, 5, 7), torch.channels_last),
    ((2, 3, 4, 6), "strided"),
]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
ACTS = [("identity", 0.0), ("relu", 0.0), ("leaky_relu", 0.2), ("silu", 0.0)]


def _layout(x, fmt):
    if fmt is None:
        return x
    if fmt == "nlc":                                                 # (N, C, L) with C innermost
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    if fmt == "strided":                                             # neither contiguous nor channels-last
        return torch.cat([x, x], dim=3)[..., ::2]
    return x.contiguous(memory_format=fmt)


def _lid(layout):
    shape, fmt = layout
    return "x".join(map(str, shape)) + ("" if fmt is None else f"-{fmt}".replace("torch.", ""))


def _torch_act(y, act, p):
    return {"identity": lambda t: t, "relu": torch.relu, "leaky_relu": lambda t: TF.leaky_relu(t, p),
            "silu": TF.silu}[act](y)


def _inputs(shape, fmt, dtype):
    c = shape[1]
    pdt = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    x = _layout((torch.randn(shape, dtype=torch.float64) * 2 + 3).to(dtype), fmt)
    w = torch.rand(c, dtype=pdt) + 0.5
    b = torch.randn(c, dtype=pdt)
    return x, w, b


def _train_step(x, w, b, act, p, momentum=0.1, dy=None):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_()
    c = x.shape[1]
    rm, rv, nbt = torch.zeros(c, dtype=w.dtype), torch.ones(c, dtype=w.dtype), torch.tensor(3)
    with forbid_torch_batchnorm():
        y, mean, var, ok = K.bn_train(x, w, b, rm, rv, nbt, momentum, 1e-5, True, act, p)
        y.backward(dy)
    return y.detach(), mean, var, ok, rm, rv, nbt, x.grad, w.grad, b.grad


@pytest.mark.parametrize("act,p", ACTS, ids=[a for a, _ in ACTS])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS, ids=_lid)
def test_train_and_eval_match_torch(layout, dtype, act, p, backend):
    shape, fmt = layout
    x, w, b = _inputs(shape, fmt, dtype)
    dy = _layout(torch.randn(shape, dtype=torch.float64).to(dtype), fmt)
    y, mean, var, ok, rm, rv, nbt, gx, gw, gb = _train_step(x, w, b, act, p, dy=dy)
    # torch's own BN (+ activation) on float64 copies is the oracle
    x64 = x.detach().double().requires_grad_()
    w64, b64 = w.double().requires_grad_(), b.double().requires_grad_()
    trm, trv = torch.zeros(shape[1], dtype=torch.float64), torch.ones(shape[1], dtype=torch.float64)
    ref = _torch_act(TF.batch_norm(x64, trm, trv, w64, b64, True, 0.1, 1e-5), act, p)
    ref.backward(dy.double())
    tol = tolerances(dtype)
    assert y.dtype == x.dtype and y.shape == x.shape
    if fmt is not None and fmt != "strided":
        assert y.stride() == x.stride() and gx.stride() == x.stride()
    torch.testing.assert_close(y.double(), ref.detach(), **tol)
    torch.testing.assert_close(gx.double(), x64.grad, **tol)
    torch.testing.assert_close(gw.double(), w64.grad, **tol)
    torch.testing.assert_close(gb.double(), b64.grad, **tol)
    torch.testing.assert_close(rm.double(), trm, **tol)
    torch.testing.assert_close(rv.double(), trv, **tol)
    assert bool(ok) and int(nbt) == 4
    # eval with the updated statistics
    xe = x.detach().clone().requires_grad_()
    with forbid_torch_batchnorm():
        ye = K.bn_eval(xe, rm, rv, w, b, 1e-5, act, p)
        ye.backward(dy)
    x64e = x.detach().double().requires_grad_()
    refe = _torch_act(TF.batch_norm(x64e, rm.double(), rv.double(), w.double(), b.double(), False, 0.1, 1e-5), act, p)
    refe.backward(dy.double())
    torch.testing.assert_close(ye.detach().double(), refe.detach(), **tol)
    torch.testing.assert_close(xe.grad.double(), x64e.grad, **tol)


@pytest.mark.parametrize("layout", LAYOUTS[:10], ids=_lid)
@pytest.mark.parametrize("act,p", [("identity", 0.0), ("leaky_relu", 0.1)], ids=["identity", "leaky_relu"])
def test_inplace_matches_out_of_place(layout, act, p, backend):
    """In-Place ABN: y over x, backward from y alone, same numbers as the out-of-place op (float64)."""
    shape, fmt = layout
    x, w, b = _inputs(shape, fmt, torch.float64)
    dy = torch.randn(shape, dtype=torch.float64)
    y, mean, var, ok, rm, rv, nbt, gx, gw, gb = _train_step(x, w, b, act, p, dy=dy)
    src = x.detach().clone().requires_grad_()
    h = src * 1.0                                                    # a non-leaf to overwrite
    wi, bi = w.clone().requires_grad_(), b.clone().requires_grad_()
    rmi, rvi, nbti = torch.zeros_like(rm), torch.ones_like(rv), torch.tensor(3)
    ptr = h.data_ptr()
    yi, mi, vi, oki = K.bn_train(h, wi, bi, rmi, rvi, nbti, 0.1, 1e-5, True, act, p, inplace=True)
    assert yi is h and h.data_ptr() == ptr
    yi.backward(dy)
    for got, want in ((yi.detach(), y), (mi, mean), (rmi, rm), (rvi, rv), (src.grad, gx), (wi.grad, gw), (bi.grad, gb)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    assert int(nbti) == int(nbt)


def test_inplace_refuses_non_invertible_activation(backend):
    x = torch.randn(4, 3, 5) * 1.0
    x.requires_grad_()
    h = x * 1
    y, *_ = K.bn_train(h, None, None, None, None, None, 0.1, 1e-5, True, "relu", 0.0, inplace=True)
    with pytest.raises(Exception, match="invertible"):
        y.sum().backward()


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (3, 2, 3, 4)], ids=str)
@pytest.mark.parametrize("act,p", ACTS, ids=[a for a, _ in ACTS])
def test_gradcheck_fused_activation(shape, act, p, backend):
    c = shape[1]
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 1).requires_grad_()
    w = (torch.rand(c, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(c, dtype=torch.float64).requires_grad_()
    train = lambda x, w, b: K.bn_train(x, w, b, None, None, None, 0.1, 1e-5, False, act, p)[0]  # noqa: E731
    rm, rv = torch.randn(c, dtype=torch.float64), torch.rand(c, dtype=torch.float64) + 0.5
    ev = lambda x, w, b: K.bn_eval(x, rm, rv, w, b, 1e-5, act, p)  # noqa: E731
    for fn in (train, ev):
        assert torch.autograd.gradcheck(fn, (x, w, b))
        if act != "relu":                                            # relu'' is a delta: not checkable numerically
            assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_stats_and_apply_compose_to_train(backend):
    """bn_stats + bn_apply = bn_train's forward; gradients of bn_apply treat the statistics as constants."""
    x = torch.randn(4, 5, 3, 3, dtype=torch.float64) * 3 + 100
    mean, var = K.bn_stats(x)
    torch.testing.assert_close(mean, x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(var, x.var(dim=(0, 2, 3), unbiased=False))
    assert not mean.requires_grad
    inv = torch.rsqrt(var + 1e-5)
    w = torch.rand(5, dtype=torch.float64, requires_grad=True)
    xa = x.clone().requires_grad_()
    y = K.bn_apply(xa, mean, inv, w, None, "relu")
    y2 = K.bn_train(x, w, None, None, None, None, 0.1, 1e-5, False, "relu")[0]
    torch.testing.assert_close(y, y2)
    dy = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (xa, w), dy)
    z = (x - mean.view(1, -1, 1, 1)) * inv.view(1, -1, 1, 1)
    mask = (z * w.detach().view(1, -1, 1, 1)) > 0
    torch.testing.assert_close(gx, dy * mask * (w.detach() * inv).view(1, -1, 1, 1))
    torch.testing.assert_close(gw, (dy * mask * z).sum(dim=(0, 2, 3)))


@pytest.mark.parametrize("act,p", ACTS, ids=[a for a, _ in ACTS])
def test_backward_halves_compose_to_backward(act, p, backend):
    """bn_backward_reduce + bn_backward_elemt (SyncBN's split) = bn_backward."""
    x = torch.randn(6, 4, 5, dtype=torch.float64)
    w, b = torch.rand(4, dtype=torch.float64) + 0.5, torch.randn(4, dtype=torch.float64)
    mean, var = K.bn_stats(x)
    inv = torch.rsqrt(var + 1e-5)
    dy = torch.randn_like(x)
    dx, dw, db = OPS.bn_backward(dy, x, w, b, mean, var, 1e-5, act, p, [True, True, True])
    s_dz, s_dzx = K.bn_backward_reduce(dy, x, mean, inv, w, b, act, p)
    assert s_dz.dtype == torch.float64
    torch.testing.assert_close(s_dz, db)
    torch.testing.assert_close(s_dzx, dw)
    torch.testing.assert_close(K.bn_backward_elemt(dy, x, mean, inv, w, b, s_dz, s_dzx, 30, act, p), dx)


def test_statistics_of_offset_data_keep_their_digits(backend):
    """Shifted/two-pass sums: a 1e4 offset with unit spread loses no accuracy (E[x²]−E[x]² would)."""
    x32 = (torch.randn(64, 3, 32, 32, dtype=torch.float64) + 1e4).float()
    mean, var = K.bn_stats(x32)
    x64 = x32.double()
    torch.testing.assert_close(mean.double(), x64.mean(dim=(0, 2, 3)), rtol=1e-7, atol=0)
    torch.testing.assert_close(var.double(), x64.var(dim=(0, 2, 3), unbiased=False), rtol=1e-5, atol=0)
    cl = x32.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(K.bn_stats(cl)[1].double(), x64.var(dim=(0, 2, 3), unbiased=False), rtol=1e-5, atol=0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_channel_innermost_sums_cover_every_row_and_channel(dtype, threads, backend):
    """The channels-innermost reductions (rows summed in blocks of eight, prefetching ahead) count
    every row once: row counts around the block size and past the prefetch distance, channel
    counts with vector tails. Oracle: float64 sums of the same values."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows, c in [(1, 3), (7, 9), (8, 8), (9, 1), (17, 33), (1003, 9), (300, 64), (45, 1027)]:
            x = (torch.randn(rows, c, dtype=torch.float64) * 2 + 3).to(dtype)
            dy = torch.randn(rows, c, dtype=torch.float64).to(dtype)
            x64, dy64 = x.double(), dy.double()
            tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-6)
            mean, var = K.bn_stats(x)
            torch.testing.assert_close(mean.double(), x64.mean(0), **tol)
            torch.testing.assert_close(var.double(), x64.var(0, unbiased=False), **tol)
            inv = torch.rsqrt(var.double() + 1e-5).to(mean.dtype)
            s_dz, s_dzx = K.bn_backward_reduce(dy, x, mean, inv, None, None, "identity", 0.0)
            xhat = (x64 - mean.double()) * inv.double()
            torch.testing.assert_close(s_dz, dy64.sum(0), **tol)
            torch.testing.assert_close(s_dzx, (dy64 * xhat).sum(0), **tol)
    finally:
        torch.set_num_threads(previous)


def _strided(t: torch.Tensor) -> torch.Tensor:
    """The same values as a (C,) view with stride 3."""
    return torch.stack([torch.full_like(t, 7.0), t, torch.full_like(t, -7.0)], dim=1)[:, 1]


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
@pytest.mark.parametrize("params", ["strided", "float64-stats"])
@pytest.mark.parametrize("shape", [(6, 70), (3, 9, 4, 5)], ids=["2d", "4d"])
def test_per_channel_readers_agree_on_any_parameter_layout(shape, params, affine, backend):
    """γ, β and the running statistics as strided views, or statistics of another dtype,
    read and written exactly as the contiguous float32 tensors of the same values are.

    Oracle: the same call with contiguous float32 parameters (the kernels read each (C,)
    tensor directly when it is unit-stride of the input's dtype, through a general reader
    otherwise; both must give the same doubles), and torch's batch_norm for the values.
    """
    torch.manual_seed(0)
    c = shape[1]
    x = torch.randn(shape) * 2 + 1
    dy = torch.randn(shape)
    w, b = (torch.rand(c) + 0.5, torch.randn(c)) if affine else (None, None)
    rm0, rv0 = torch.randn(c), torch.rand(c) + 0.5

    def run(w, b, rm, rv):
        xg = x.clone().requires_grad_()
        wg = w.clone().requires_grad_() if w is not None else None
        bg = b.clone().requires_grad_() if b is not None else None
        y, mean, var, ok = K.bn_train(xg, wg, bg, rm, rv, None, 0.1, 1e-5, True, "leaky_relu", 0.1)
        y.backward(dy)
        # eval refuses float64 statistics beside a float32 input
        e = K.bn_eval(x, rm, rv, w, b, 1e-5, "relu", 0.0) if rm.dtype == torch.float32 else None
        grads = [xg.grad] + ([wg.grad, bg.grad] if affine else [])
        return [y.detach(), mean, var, rm.clone(), rv.clone(), e] + grads

    ref = run(w, b, rm0.clone(), rv0.clone())
    if params == "strided":
        other = run(_strided(w) if affine else None, _strided(b) if affine else None, _strided(rm0), _strided(rv0))
    else:                                                            # running statistics in float64
        rm64, rv64 = rm0.double(), rv0.double()
        other = run(w, b, rm64, rv64)
        # the update is formed in double and rounded once to each buffer's dtype
        torch.testing.assert_close(other[3].float(), ref[3], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(other[4].float(), ref[4], rtol=1e-6, atol=1e-7)
        other[3], other[4] = ref[3], ref[4]
    for i, (a, o) in enumerate(zip(ref, other)):
        if a is not None and o is not None:
            assert torch.equal(a, o), f"output {i} differs"
    # and the values are torch's
    rm_t, rv_t = rm0.clone(), rv0.clone()
    y_t = TF.leaky_relu(TF.batch_norm(x, rm_t, rv_t, w, b, True, 0.1, 1e-5), 0.1)
    tol = tolerances(torch.float32)
    torch.testing.assert_close(ref[0], y_t, **tol)
    torch.testing.assert_close(ref[3], rm_t, **tol)
    torch.testing.assert_close(ref[4], rv_t, **tol)


def test_expanded_gradient_and_empty_batch(backend):
    """dy with stride 0 (from .sum()) is read correctly; an empty batch gives an empty output."""
    x = torch.randn(4, 3, 5, requires_grad=True)
    y = K.bn_train(x, None, None, None, None, None, 0.1, 1e-5)[0]
    (gx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(gx, torch.zeros_like(gx), atol=1e-5, rtol=0)
    e = torch.randn(0, 3, 5)
    rm, rv, nbt = torch.zeros(3), torch.ones(3), torch.tensor(0)
    ye, mean, var, ok = K.bn_train(e, None, None, rm, rv, nbt, 0.1, 1e-5)
    assert ye.shape == e.shape and bool(ok) and int(nbt) == 1
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))


@pytest.mark.parametrize("slot", ["weight", "bias", "running_mean", "running_var"])
def test_refused_training_call_leaves_the_buffers_as_they_were(slot, backend):
    """A (C,) tensor of an integer dtype is refused in one line before anything is written:
    the running statistics and num_batches_tracked keep their values (the compiled kernel
    used to update them, then raise on the integer tensor)."""
    c = 3
    args = {"weight": torch.ones(c), "bias": torch.zeros(c), "running_mean": torch.randn(c),
            "running_var": torch.rand(c) + 0.5}
    args[slot] = args[slot].to(torch.int64)
    nbt = torch.tensor(5)
    before = {k: v.clone() for k, v in args.items()}
    with pytest.raises(RuntimeError, match=f"bnlab: {slot} should be a float64, float32, float16 or bfloat16 tensor"):
        torch.ops.bnlab.bn_train(torch.randn(4, c), args["weight"], args["bias"], args["running_mean"],
                                 args["running_var"], nbt, 0.1, 1e-5, True, "identity", 0.0)
    assert int(nbt) == 5
    for k in args:
        assert torch.equal(args[k], before[k]), k


def test_bad_arguments_raise_clear_errors(backend):
    x = torch.randn(4, 3, 5)
    with pytest.raises(RuntimeError, match="weight should contain 3 elements"):
        K.bn_train(x, torch.ones(4), None, None, None, None, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="unknown activation"):
        K.bn_eval(x, torch.zeros(3), torch.ones(3), None, None, 1e-5, "tanh")
