"""Fused CPU backend: multithreaded numba loops, the default for CPU tensors.

Same contract as :mod:`bnlab.kernels.reference` (see :mod:`bnlab.kernels`), fewer
passes over memory:

* training forward — one pass for the statistics (shifted float64 sums), one
  read+write pass for y = (x − μ_B)·γσ⁻¹ + β  (Alg. 1);
* backward — one pass for Σdy and Σdy·(x − μ_B), one read+write pass for
  dx = γσ⁻¹·dy − γσ⁻¹Σdy/m − γσ⁻²Σ(dy·x̂)/m·(x − μ_B)  (Section 3);
* eval forward — one read+write pass (Alg. 2).

No input-sized temporary is allocated besides the outputs (a gradient whose memory
layout differs from the input's is first copied into the input's layout). Supported:
CPU, float32/float64 (float16/bfloat16 through float32 math), contiguous or
channels-last (channel axis innermost) inputs; anything else goes to the reference.

Compilation is lazy (first use of each dtype) and cached on disk (numba
``cache=True``), so later processes only load machine code. If numba is missing or
cannot compile, this backend warns once and every call runs the reference.
"""
from __future__ import annotations

import os
import threading
import warnings

import numpy as np
import torch

from .._stats import count_per_channel, stats_dtype
from . import reference

NAME = "numba"
_SUPPORTED = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_state = {"kernels": None, "error": None, "warned": False, "tables": {}}
_LOCK = threading.Lock()
_NUMBA: dict = {}                       # numba's pool size and set_num_threads, filled on first use


def _cache_dir_fallback() -> None:
    """Point numba's cache at a user cache dir when the package dir is read-only."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    here = os.path.dirname(os.path.abspath(__file__))
    pycache = os.path.join(here, "__pycache__")
    if os.access(pycache if os.path.isdir(pycache) else here, os.W_OK):
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "bnlab", "numba")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return                                                       # numba's own fallbacks apply
    os.environ["NUMBA_CACHE_DIR"] = path
    try:
        import numba.core.config as cfg                              # already imported: update it too
        cfg.CACHE_DIR = path
    except Exception:
        pass


def _disable(err: BaseException) -> None:
    _state["kernels"] = False
    _state["error"] = err
    if not _state["warned"]:
        _state["warned"] = True
        warnings.warn(
            f"bnlab: the numba kernels are unavailable ({type(err).__name__}: {err}); "
            "falling back to the reference (pure torch) kernels",
            RuntimeWarning,
            stacklevel=4,
        )


def _kernels():
    """The compiled-kernel module, or ``None`` when numba cannot be used (warns once)."""
    k = _state["kernels"]
    if k is None:
        try:
            if os.environ.get("BNLAB_DISABLE_NUMBA"):
                raise ImportError("disabled by BNLAB_DISABLE_NUMBA")
            _cache_dir_fallback()
            from . import _numba_kernels as k
            import numba

            _NUMBA.update(max=numba.config.NUMBA_NUM_THREADS, set=numba.set_num_threads, current={})
            _state["kernels"] = k
        except Exception as err:                                     # ImportError, numba config errors
            _disable(err)
            return None
    return k or None


def is_available() -> bool:
    """Whether the fused kernels can run in this process (imports numba on first call)."""
    return _kernels() is not None


def _perm_last(ndim: int) -> tuple[int, ...]:
    return (0,) + tuple(range(2, ndim)) + (1,)


def _layout(x: torch.Tensor) -> str | None:
    """``"cf"`` (channels first, contiguous), ``"cl"`` (channel axis innermost) or ``None``."""
    if x.is_contiguous():
        return "cf"
    if x.dim() > 2 and x.permute(_perm_last(x.dim())).is_contiguous():
        return "cl"
    return None


def supports(x: torch.Tensor) -> bool:
    """CPU, a supported dtype, a dense contiguous/channels-last layout, and numba working."""
    return (
        x.device.type == "cpu"
        and x.layout == torch.strided
        and x.dtype in _SUPPORTED
        and x.dim() >= 2
        and x.numel() > 0
        and _layout(x) is not None
        and not x.is_conj()
        and _kernels() is not None
    )


def _view3(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``(A, C, B)`` view in memory order: (N, C, spatial) or (N·spatial, C, 1)."""
    n, c = t.shape[0], t.shape[1]
    if layout == "cf":
        return t.view(n, c, -1)
    return t.permute(_perm_last(t.dim())).view(-1, c, 1)


def _np3(t: torch.Tensor, layout: str) -> np.ndarray:
    v = _view3(t.detach(), layout)
    if v.dtype == torch.float16:
        return v.view(torch.int16).numpy().view(np.uint16)          # float16 bit patterns
    if v.dtype == torch.bfloat16:
        return v.view(torch.int16).numpy()                           # bfloat16 bit patterns
    return v.numpy()


def _table(dtype: torch.dtype) -> np.ndarray:
    """float32 value of every 16-bit pattern of a half type (a 1-element dummy otherwise)."""
    tab = _state["tables"].get(dtype)
    if tab is None:
        if dtype in (torch.float16, torch.bfloat16):
            tab = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype).float().numpy()
        else:
            tab = np.zeros(1, np.float32)
        _state["tables"][dtype] = tab
    return tab


def _cdtype(dtype: torch.dtype):
    """numpy dtype of the element-wise math (float64 for float64 input, float32 otherwise)."""
    return np.float64 if dtype == torch.float64 else np.float32


def _like(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``t`` with ``x``'s strides (copied only when they differ, e.g. an expanded gradient)."""
    if t.stride() == x.stride() and t.dtype == x.dtype:
        return t
    return torch.empty_like(x).copy_(t)


def _vec(t, n: int, fill: float) -> np.ndarray:
    """A ``(C,)`` parameter as float64 numpy (``fill`` when absent); numpy casts, not ``Tensor.to``."""
    if t is None:
        return np.full(n, fill, np.float64)
    t = t.detach()
    if t.dtype in (torch.float32, torch.float64):
        return t.numpy().astype(np.float64)
    return t.to(torch.float64).numpy()


# Threads: below this many elements one thread beats waking a pool (measured on 2 cores:
# a (256, 1024) reduction takes ~60 µs on one thread, more on two); above it, as many
# threads as torch uses (``torch.set_num_threads``), capped by numba's pool size.
SERIAL_BELOW = 1 << 20
_NUMBA = {}


def _threads(x: torch.Tensor) -> int:
    if x.numel() < SERIAL_BELOW:
        return 1
    return max(1, min(torch.get_num_threads(), _NUMBA["max"]))


def _setup(x: torch.Tensor):
    layout = _layout(x)
    xv = _np3(x, layout)
    per_channel = xv.shape[2] >= 32 and xv.shape[1] >= _threads(x)
    return layout, xv, per_channel


def _k(x: torch.Tensor):
    """The kernel set for ``x``: the serial builds below ``SERIAL_BELOW`` elements."""
    k = _kernels()
    return k.serial if _threads(x) == 1 else k


def _run(fallback, fn, x, *args):
    """``fn(*args)`` with the thread count for input ``x``, one call at a time (numba's
    workqueue pool is not re-entrant); on any kernel failure disable the backend (one
    warning) and run the reference's ``fallback`` instead."""
    if _kernels() is None:
        return getattr(reference, fallback)(*args)
    try:
        with _LOCK:
            nt, tid = _threads(x), threading.get_ident()
            if nt > 1 and _NUMBA["current"].get(tid) != nt:                     # numba's count is per thread
                _NUMBA["set"](nt)
                _NUMBA["current"][tid] = nt
            return fn(*args)
    except Exception as err:
        _disable(err)
        return getattr(reference, fallback)(*args)


# ----------------------------------------------------------------------------- contract
def forward_train(x, weight, bias, eps):
    """Alg. 1 fused: ``(y, μ_B, σ²_B)`` in two passes over ``x`` (see :mod:`reference`)."""
    return _run("forward_train", _forward_train, x, x, weight, bias, eps)


def _forward_train(x, weight, bias, eps):
    K = _k(x)
    layout, xv, per_channel = _setup(x)
    tab = _table(x.dtype)
    m = count_per_channel(x)
    first = xv[0, :, 0]                                              # per-channel shift k   (C,)
    shift = first.astype(np.float64) if xv.dtype.kind == "f" else tab[first.astype(np.int64) & 0xFFFF].astype(np.float64)
    s1, s2 = K.channel_sums(xv, shift, tab, per_channel)
    # Alg. 1: μ_B = k + Σd/m,  σ²_B = (Σd² − (Σd)²/m)/m  with d = x − k  (float64), stored in
    # the statistics dtype; the normalisation uses the stored (rounded) values
    sd = np.float64 if x.dtype == torch.float64 else np.float32
    mean = (shift + s1 / m).astype(sd)
    var = np.maximum((s2 - s1 * s1 / m) / m, 0.0).astype(sd)
    mean64 = mean.astype(np.float64)
    invstd = 1.0 / np.sqrt(var.astype(np.float64) + eps)            # σ⁻¹ = 1/sqrt(σ²_B + ε)
    y = _affine(x, layout, xv, mean64, invstd, weight, bias)
    return y, torch.from_numpy(mean), torch.from_numpy(var)


def forward_eval(x, mean, var, weight, bias, eps):
    """Alg. 2 fused: one read+write pass with the given statistics."""
    return _run("forward_eval", _forward_eval, x, x, mean, var, weight, bias, eps)


def _stat64(t: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """A statistic rounded to ``x``'s statistics dtype, as float64 numpy ``(C,)``."""
    sd = np.float64 if x.dtype == torch.float64 else np.float32
    return _vec(t, 0, 0.0).astype(sd).astype(np.float64)


def _forward_eval(x, mean, var, weight, bias, eps):
    layout, xv, _ = _setup(x)
    invstd = 1.0 / np.sqrt(_stat64(var, x) + eps)
    return _affine(x, layout, xv, _stat64(mean, x), invstd, weight, bias)


def _affine(x, layout, xv, mean, invstd, weight, bias):
    # Alg. 1: y = γ·(x − μ)·σ⁻¹ + β = (x − μ)·scale + β, scale = γσ⁻¹   (C,)
    c = x.shape[1]
    cd = _cdtype(x.dtype)
    scale = (invstd * _vec(weight, c, 1.0)).astype(cd)
    offset = _vec(bias, c, 0.0).astype(cd)
    y = torch.empty_like(x)
    _k(x).affine(xv, _np3(y, layout), mean.astype(cd), scale, offset, _table(x.dtype))
    return y


def backward(grad_out, x, weight, mean, invstd, needs_input_grad=(True, True, True)):
    """Section 3 fused: one reduction pass over (dy, x), one pass writing dx."""
    return _run("backward", _backward, x, grad_out, x, weight, mean, invstd, needs_input_grad)


def _param_dtype(x, weight):
    return weight.dtype if weight is not None else stats_dtype(x.dtype)


def _backward(grad_out, x, weight, mean, invstd, needs_input_grad=(True, True, True)):
    need_dx, need_dw, need_db = needs_input_grad
    K = _k(x)
    layout, xv, per_channel = _setup(x)
    dy = _like(x, grad_out)
    dyv = _np3(dy, layout)
    tab = _table(x.dtype)
    c, m = x.shape[1], count_per_channel(x)
    mu = _vec(mean, c, 0.0)
    inv = _vec(invstd, c, 1.0)
    s_dy, s_dyxc = K.grad_sums(dyv, xv, mu, tab, per_channel)         # Σdy, Σdy·(x − μ)   (C,)
    s_dyxhat = s_dyxc * inv                                          # Σdy·x̂
    dx = dw = db = None
    if need_dx:
        cd = _cdtype(x.dtype)
        g = inv * _vec(weight, c, 1.0)                               # γσ⁻¹
        dx = torch.empty_like(x)
        K.train_dx(dyv, xv, _np3(dx, layout), mu.astype(cd), g.astype(cd), (g * s_dy / m).astype(cd),
                   (g * inv * s_dyxhat / m).astype(cd), tab)
    pd = _param_dtype(x, weight)
    if need_dw and weight is not None:
        dw = torch.from_numpy(s_dyxhat).to(pd)
    if need_db:
        db = torch.from_numpy(s_dy).to(pd)
    return dx, dw, db


def backward_eval(grad_out, x, weight, mean, invstd, needs_input_grad=(True, True, True)):
    """Eval-mode gradient: dx = γσ⁻¹·dy in one pass; dγ, dβ from one reduction pass."""
    return _run("backward_eval", _backward_eval, x, grad_out, x, weight, mean, invstd, needs_input_grad)


def _backward_eval(grad_out, x, weight, mean, invstd, needs_input_grad=(True, True, True)):
    need_dx, need_dw, need_db = needs_input_grad
    K = _k(x)
    layout, xv, per_channel = _setup(x)
    dy = _like(x, grad_out)
    dyv = _np3(dy, layout)
    tab = _table(x.dtype)
    c = x.shape[1]
    inv = _vec(invstd, c, 1.0)
    dx = dw = db = None
    if need_dx:
        cd = _cdtype(x.dtype)
        dx = torch.empty_like(x)
        zero = np.zeros(c, cd)
        K.affine(dyv, _np3(dx, layout), zero, (inv * _vec(weight, c, 1.0)).astype(cd), zero, tab)
    pd = _param_dtype(x, weight)
    if need_db or (need_dw and weight is not None):
        s_dy, s_dyxc = K.grad_sums(dyv, xv, _vec(mean, c, 0.0), tab, per_channel)
        if need_dw and weight is not None:
            dw = torch.from_numpy(s_dyxc * inv).to(pd)
        if need_db:
            db = torch.from_numpy(s_dy).to(pd)
    return dx, dw, db
