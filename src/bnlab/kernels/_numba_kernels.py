"""Numba loops of the fused CPU backend (imported only when numba is usable).

Every kernel sees the input as a C-contiguous 3-D array ``(A, C, B)``:

* ``(N, C)``                  → ``(N, C, 1)``
* ``(N, C, L)``, NCHW, NCDHW  → ``(N, C, L·H·W…)``
* channels_last NHWC / NDHWC  → ``(N·H·W…, C, 1)``

and loops in memory order. Two loop shapes cover all layouts:

* *per channel* (``B`` long): ``prange`` over channels, each thread streams the
  contiguous ``B``-runs of its own channels — no partial sums to merge;
* *row-wise* (``B`` short, the (N, C) and channels_last cases): ``prange`` over
  blocks of rows, each block accumulating into its own ``(C,)`` row of a
  ``(blocks, C)`` partial-sum table, merged at the end (O(blocks·C) memory).

Sums accumulate in float64. The statistics are *shifted* sums, one pass over the
input: with a per-channel shift k (the channel's first value),
μ = k + Σd/m and σ² = (Σd² − (Σd)²/m)/m for d = x − k, which keeps full float64
precision as long as |μ − k| is not many orders of magnitude above σ (k is a value
of the channel itself, so it is within a few σ of μ on any sane data).

Half types arrive as raw 16-bit patterns (uint16 for float16, int16 for bfloat16),
are widened through a 65536-entry float32 table and rounded back to nearest-even
on store; float32 math in between.
"""
from __future__ import annotations

from types import FunctionType, SimpleNamespace

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

_OPTS = dict(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
_SERIAL_OPTS = dict(_OPTS, parallel=False)
ROW_BLOCK = 64           # rows per block in the row-wise reductions
serial = SimpleNamespace()  # single-threaded builds of every kernel, same names


def _parallel_and_serial(fn):
    """Compile ``fn`` twice: multithreaded (returned) and single-threaded (``serial.<name>``).

    The serial build never touches numba's thread pool, so a small call costs microseconds
    and never waits on (or competes with) sleeping or spinning workers; ``prange`` is a plain
    ``range`` there. A renamed copy keeps the two on-disk cache entries apart.
    """
    copy = FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + "_serial"
    setattr(serial, fn.__name__, njit(**_SERIAL_OPTS)(copy))
    return njit(**_OPTS)(fn)


# ----------------------------------------------------------------------------- element access
def _ld(a, i, j, k, table):
    """Value of ``a[i, j, k]`` as a float (widening 16-bit patterns through ``table``)."""


def _st(a, i, j, k, v):
    """Store float ``v`` into ``a[i, j, k]`` in ``a``'s dtype, rounding to nearest-even."""


@overload(_ld, inline="always")
def _ld_impl(a, i, j, k, table):
    if isinstance(a.dtype, types.Float):
        return lambda a, i, j, k, table: a[i, j, k]
    return lambda a, i, j, k, table: table[np.int64(a[i, j, k]) & 0xFFFF]


def _f32_to_f16_bits(v):
    pass


def _f32_to_bf16_bits(v):
    pass


@overload(_f32_to_bf16_bits, inline="always")
def _to_bf16_impl(v):
    def impl(v):
        bits = np.uint32(np.float32(v).view(np.uint32))
        if (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):     # NaN stays a (quiet) NaN
            h = (bits >> np.uint32(16)) | np.uint32(0x40)
        else:
            h = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        return np.int16(h)                                              # bit pattern, wraps
    return impl


@overload(_f32_to_f16_bits, inline="always")
def _to_f16_impl(v):
    def impl(v):
        f = np.float32(v)
        bits = np.uint32(f.view(np.uint32))
        sign = (bits >> np.uint32(16)) & np.uint32(0x8000)
        ab = bits & np.uint32(0x7FFFFFFF)
        if ab > np.uint32(0x7F800000):                                  # NaN
            h = np.uint32(0x7E00)
        elif ab >= np.uint32(0x477FF000):                               # ≥ 65520 rounds to inf
            h = np.uint32(0x7C00)
        elif ab < np.uint32(0x38800000):                                # half subnormal or zero
            h = np.uint32(np.rint(np.abs(f) * np.float32(16777216.0)))  # units of 2^-24, ties to even
        else:                                                           # normal: rebias, round 23→10 bits
            b = ab - np.uint32(0x38000000)
            h = (b + np.uint32(0xFFF) + ((b >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)
        return np.uint16(h | sign)
    return impl


@overload(_st, inline="always")
def _st_impl(a, i, j, k, v):
    if isinstance(a.dtype, types.Float):
        def impl(a, i, j, k, v):
            a[i, j, k] = v
    elif a.dtype == types.uint16:
        def impl(a, i, j, k, v):
            a[i, j, k] = _f32_to_f16_bits(v)
    else:
        def impl(a, i, j, k, v):
            a[i, j, k] = _f32_to_bf16_bits(v)
    return impl


# ----------------------------------------------------------------------------- reductions
@_parallel_and_serial
def channel_sums(x, shift, table, per_channel):
    """Shifted sums per channel: ``s1 = Σ(x − k)`` and ``s2 = Σ(x − k)²``, float64 ``(C,)``.

    Alg. 1 lines 1-2 in one pass over ``x`` ``(A, C, B)``; ``shift`` is k ``(C,)``.
    """
    A, C, B = x.shape
    s1 = np.zeros(C, np.float64)
    s2 = np.zeros(C, np.float64)
    if per_channel:
        for c in prange(C):
            k = shift[c]
            acc1 = 0.0
            acc2 = 0.0
            for i in range(A):
                for j in range(B):
                    d = np.float64(_ld(x, i, c, j, table)) - k
                    acc1 += d
                    acc2 += d * d
            s1[c] = acc1
            s2[c] = acc2
    else:
        nblk = (A + ROW_BLOCK - 1) // ROW_BLOCK
        p1 = np.zeros((nblk, C), np.float64)                          # (blocks, C) partial sums
        p2 = np.zeros((nblk, C), np.float64)
        for t in prange(nblk):
            a1 = np.zeros(C, np.float64)                              # this block's sums (C,)
            a2 = np.zeros(C, np.float64)
            for i in range(t * ROW_BLOCK, min(A, (t + 1) * ROW_BLOCK)):
                if B == 1:                                            # rows of C: vectorised over c
                    for c in range(C):
                        d = np.float64(_ld(x, i, c, 0, table)) - shift[c]
                        a1[c] += d
                        a2[c] += d * d
                else:
                    for c in range(C):
                        k = shift[c]
                        for j in range(B):
                            d = np.float64(_ld(x, i, c, j, table)) - k
                            a1[c] += d
                            a2[c] += d * d
            p1[t, :] = a1
            p2[t, :] = a2
        for t in range(nblk):
            for c in range(C):
                s1[c] += p1[t, c]
                s2[c] += p2[t, c]
    return s1, s2


@_parallel_and_serial
def grad_sums(dy, x, mean, table, per_channel):
    """Section 3's reductions, float64 ``(C,)``: ``Σ dy`` and ``Σ dy·(x − μ)``."""
    A, C, B = x.shape
    s1 = np.zeros(C, np.float64)
    s2 = np.zeros(C, np.float64)
    if per_channel:
        for c in prange(C):
            mu = mean[c]
            acc1 = 0.0
            acc2 = 0.0
            for i in range(A):
                for j in range(B):
                    g = np.float64(_ld(dy, i, c, j, table))
                    acc1 += g
                    acc2 += g * (np.float64(_ld(x, i, c, j, table)) - mu)
            s1[c] = acc1
            s2[c] = acc2
    else:
        nblk = (A + ROW_BLOCK - 1) // ROW_BLOCK
        p1 = np.zeros((nblk, C), np.float64)                          # (blocks, C) partial sums
        p2 = np.zeros((nblk, C), np.float64)
        for t in prange(nblk):
            a1 = np.zeros(C, np.float64)                              # this block's sums (C,)
            a2 = np.zeros(C, np.float64)
            for i in range(t * ROW_BLOCK, min(A, (t + 1) * ROW_BLOCK)):
                if B == 1:                                            # rows of C: vectorised over c
                    for c in range(C):
                        g = np.float64(_ld(dy, i, c, 0, table))
                        a1[c] += g
                        a2[c] += g * (np.float64(_ld(x, i, c, 0, table)) - mean[c])
                else:
                    for c in range(C):
                        mu = mean[c]
                        for j in range(B):
                            g = np.float64(_ld(dy, i, c, j, table))
                            a1[c] += g
                            a2[c] += g * (np.float64(_ld(x, i, c, j, table)) - mu)
            p1[t, :] = a1
            p2[t, :] = a2
        for t in range(nblk):
            for c in range(C):
                s1[c] += p1[t, c]
                s2[c] += p2[t, c]
    return s1, s2


# ----------------------------------------------------------------------------- element-wise passes
@_parallel_and_serial
def affine(x, out, center, scale, offset, table):
    """``out = (x − center)·scale + offset`` per channel (Alg. 1 line 3-4 folded; also eval dx)."""
    A, C, B = x.shape
    if B == 1:
        for i in prange(A):
            for c in range(C):
                _st(out, i, c, 0, (_ld(x, i, c, 0, table) - center[c]) * scale[c] + offset[c])
    else:
        for r in prange(A * C):
            i = r // C
            c = r - i * C
            mu = center[c]
            s = scale[c]
            o = offset[c]
            for j in range(B):
                _st(out, i, c, j, (_ld(x, i, c, j, table) - mu) * s + o)


@_parallel_and_serial
def train_dx(dy, x, dx, mean, a, b, k, table):
    """Section 3's input gradient, one pass: ``dx = a·dy − b − k·(x − μ)`` per channel.

    With g = γ·σ⁻¹: a = g, b = g·Σdy/m, k = g·σ⁻¹·Σ(dy·x̂)/m.
    """
    A, C, B = x.shape
    if B == 1:
        for i in prange(A):
            for c in range(C):
                v = a[c] * _ld(dy, i, c, 0, table) - b[c] - k[c] * (_ld(x, i, c, 0, table) - mean[c])
                _st(dx, i, c, 0, v)
    else:
        for r in prange(A * C):
            i = r // C
            c = r - i * C
            ac, bc, kc, mu = a[c], b[c], k[c], mean[c]
            for j in range(B):
                _st(dx, i, c, j, ac * _ld(dy, i, c, j, table) - bc - kc * (_ld(x, i, c, j, table) - mu))
