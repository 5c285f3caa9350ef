"""The ``bnlab`` operators and the one place that decides which implementation runs.

Every Batch Normalization in bnlab is a call of a ``torch.ops.bnlab`` operator
(schemas in :mod:`._schema`) — eager, TorchScript, tracing, export, compile alike —
except under functorch transforms and forward-mode AD, where a *composite* of plain
differentiable torch ops runs instead (the same formulas, :mod:`.reference`).

Implementations behind the operators:

* ``"compiled"`` — the C++ extension (``csrc/``): CPU kernels and their autograd,
  built on first use and cached (:mod:`._loader`);
* ``"reference"`` — pure torch (:mod:`.reference`), every device, and CPU when the
  extension is unavailable (no compiler: one warning) or chosen with
  :func:`set_backend` / ``BNLAB_BACKEND``.

Each call is counted per (path, reason) — :func:`path_counts`. A call that the
compiled kernels cannot serve takes another path for that call only.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter

import torch
from torch.autograd import forward_ad as _fwAD

from . import _loader, fake, reference
from ._schema import ACTIVATIONS, INVERTIBLE, OPS, SCHEMAS

__all__ = [
    "bn_train", "bn_eval", "bn_stats", "bn_apply", "bn_backward_reduce", "bn_backward_elemt",
    "set_backend", "get_backend", "available_backends", "path_counts", "reset_path_counts",
    "build", "extension_status", "ACTIVATIONS", "INVERTIBLE", "OPS", "SCHEMAS",
]

# ----------------------------------------------------------------------------- registrations
_IMPL = torch.library.Library("bnlab", "IMPL")
for _name in reference.OPS:                                          # every device, any dtype
    _IMPL.impl(_name, getattr(reference, _name), "CompositeExplicitAutograd")
for _name in reference.GRAPH_OPS:                                    # differentiable by construction
    _IMPL.impl(_name, getattr(reference, _name), "CompositeImplicitAutograd")
fake.register(_IMPL)

from .. import _autograd  # noqa: E402  (needs the operators defined above)

_autograd.register(_IMPL)

# ----------------------------------------------------------------------------- backend choice
_BACKENDS = ("compiled", "reference")
_state: dict = {"backend": None, "cpu_key": None, "ref_lib": None, "warned": False}
_COUNTS: Counter = Counter()


def available_backends() -> list[str]:
    """Backends :func:`set_backend` accepts besides ``"auto"``: ``"compiled"`` where it can run."""
    return ["compiled", "reference"] if _loader.unavailable_reason() is None else ["reference"]


def set_backend(name: str) -> None:
    """Choose the CPU kernels: ``"auto"`` (default: compiled when available), ``"compiled"`` or ``"reference"``.

    The environment variable ``BNLAB_BACKEND`` sets the initial choice. Other devices
    always run the reference.
    """
    if not isinstance(name, str) or name not in ("auto",) + _BACKENDS:
        raise ValueError(f"unknown bnlab backend {name!r}; choose one of {['auto', *_BACKENDS]}")
    if name == "compiled":
        reason = _loader.unavailable_reason()
        if reason is not None:
            raise ValueError(f"bnlab backend 'compiled' is not available: {reason}")
    _state["backend"] = name
    _state["cpu_key"] = None                                         # resolved on the next call
    _reference_override(name == "reference")


def get_backend() -> str:
    """The backend name in force (``"auto"`` unless set)."""
    if _state["backend"] is None:
        set_backend(os.environ.get("BNLAB_BACKEND", "auto").strip() or "auto")
    return _state["backend"]


def _reference_override(on: bool) -> None:
    """Put the reference in front of the C++ CPU kernels (or take it away again)."""
    lib = _state["ref_lib"]
    if on and lib is None and _loader.status()["loaded"]:
        lib = torch.library.Library("bnlab", "IMPL")
        with warnings.catch_warnings():                              # "overriding a kernel": on purpose
            warnings.simplefilter("ignore")
            for name in reference.OPS:
                lib.impl(name, getattr(reference, name), "CPU")
        _state["ref_lib"] = lib
    elif not on and lib is not None:
        lib._destroy()
        _state["ref_lib"] = None


def _cpu_key() -> tuple[str, str]:
    """(path, reason) of an operator call on CPU, resolved once per backend choice."""
    key = _state["cpu_key"]
    if key is None:
        backend = get_backend()
        if backend == "reference":
            key = ("reference", "backend")
        elif _loader.ensure():
            key = ("compiled", "cpu")
            _reference_override(False)
        else:
            key = ("reference", "no_extension")
            if not _state["warned"]:
                _state["warned"] = True
                warnings.warn(f"bnlab: the compiled CPU kernels are unavailable ({_loader.status()['error']}); "
                              "using the reference (pure torch) kernels", RuntimeWarning, stacklevel=4)
        _state["cpu_key"] = key
    return key


def _composite(tensors) -> bool:
    """True when this call must run as plain differentiable torch ops (counted)."""
    if torch.compiler.is_compiling():
        return False                                                 # the real operator, traced
    if torch._C._are_functorch_transforms_active():
        _COUNTS[("composite", "functorch")] += 1
        return True
    if _fwAD._current_level >= 0 and any(
        t is not None and _fwAD.unpack_dual(t).tangent is not None for t in tensors
    ):
        _COUNTS[("composite", "forward_ad")] += 1
        return True
    x = tensors[0]
    _COUNTS[_state["cpu_key"] or _cpu_key() if x.is_cpu else ("reference", "device")] += 1
    return False


def path_counts() -> dict[tuple[str, str], int]:
    """Calls per (path, reason) since the last :func:`reset_path_counts`.

    Paths: ``"compiled"``, ``"reference"``, ``"composite"``; reasons e.g. ``"cpu"``,
    ``"backend"`` (chosen), ``"no_extension"``, ``"device"``, ``"functorch"``, ``"forward_ad"``.
    """
    return dict(_COUNTS)


def reset_path_counts() -> None:
    _COUNTS.clear()


def build(verbose: bool = True) -> str:
    """Build (or find) the C++ extension now; returns a one-line summary. Raises if it cannot."""
    ok = _loader.ensure(verbose=verbose)
    st = _loader.status()
    if not ok:
        raise RuntimeError(f"bnlab: cannot build the C++ kernels: {st['error']}")
    _state["cpu_key"] = None
    _reference_override(get_backend() == "reference")                # a chosen reference stays in front
    return f"bnlab C++ kernels: {st['path']}"


def extension_status() -> dict:
    """``{"loaded": bool, "path": str | None, "error": str | None}`` of the C++ extension."""
    return _loader.status()


# ----------------------------------------------------------------------------- entry points
_T_train, _T_train_, _T_eval, _T_stats, _T_apply = (
    OPS.bn_train.default, OPS.bn_train_.default, OPS.bn_eval.default, OPS.bn_stats.default, OPS.bn_apply.default,
)
# the same operators without OpOverload.__call__'s Python frame (~0.9 µs of an 11-argument call) for
# eager calls; torch.compile traces the OpOverload objects
_E_train, _E_eval = _T_train._op, _T_eval._op
# bound once: module attribute lookups are part of a call's cost (torch.compile recognises
# these function objects by identity, so the aliases trace as the originals)
_is_compiling = torch.compiler.is_compiling
_functorch_active = torch._C._are_functorch_transforms_active
_COMPILED_CPU = ("compiled", "cpu")


def _primal(t):
    """``t`` without a forward-AD tangent: torch's BN ignores a running statistic's tangent (and
    updates the primal, a view of the dual buffer, in place)."""
    return t if t is None else _fwAD.unpack_dual(t).primal


def bn_train(x, weight, bias, running_mean, running_var, num_batches_tracked, momentum, eps,
             guard=True, act="identity", act_param=0.0, inplace=False):
    """Alg. 1 with the running-statistics update in place: ``(y, mean, var, ok)``.

    ``mean``/``var`` are the biased batch statistics ``(C,)`` (statistics dtype, not
    differentiable); ``ok`` a 0-dim bool tensor, False when ``guard`` found them
    non-finite (buffers and count then untouched). ``running_*``/``num_batches_tracked``
    may be None (no update). ``momentum=None``: cumulative average 1/num_batches_tracked.
    ``inplace=True`` writes y over ``x`` (In-Place ABN; ``act`` identity or leaky_relu,
    γ ≠ 0) and returns ``x`` as y.
    """
    if not inplace and not _is_compiling() and _fwAD._current_level < 0 and x.is_cpu and not _functorch_active():
        # the plain eager CPU call (what the general path below does for it, in this one frame:
        # each Python frame costs ~20 µs when a convolution has just flushed the caches)
        _COUNTS[_state["cpu_key"] or _cpu_key()] += 1
        return _E_train(x, weight, bias, running_mean, running_var, num_batches_tracked, momentum, eps, guard,
                        act, act_param)
    if _fwAD._current_level >= 0:
        running_mean, running_var = _primal(running_mean), _primal(running_var)
    if _composite((x, weight, bias)):
        if inplace:
            raise RuntimeError("bnlab: in-place BN cannot run under functorch transforms or forward AD")
        try:
            return reference.bn_train(x, weight, bias, running_mean, running_var, num_batches_tracked,
                                      momentum, eps, guard, act, act_param)
        except RuntimeError as err:
            if running_mean is None and num_batches_tracked is None:
                raise
            raise RuntimeError(
                "bnlab: under a functorch transform the running statistics cannot be updated in place "
                f"({err}); use track_running_stats=False, torch.func.replace_all_batch_norm_modules_, "
                "or give every vmapped model its own buffers (torch.func.stack_module_state)"
            ) from err
    if inplace:
        mean, var, ok = _T_train_(x, weight, bias, running_mean, running_var, num_batches_tracked,
                                  momentum, eps, guard, act, act_param)
        return x, mean, var, ok
    op = _T_train if torch.compiler.is_compiling() else _E_train
    return op(x, weight, bias, running_mean, running_var, num_batches_tracked, momentum, eps, guard, act, act_param)


def bn_eval(x, running_mean, running_var, weight, bias, eps, act="identity", act_param=0.0):
    """Alg. 2: ``y = act(γ·(x − running_mean)/sqrt(running_var + ε) + β)``; no gradient to the statistics."""
    if not _is_compiling() and _fwAD._current_level < 0 and x.is_cpu and not _functorch_active():
        _COUNTS[_state["cpu_key"] or _cpu_key()] += 1                # the plain eager CPU call (see bn_train)
        return _E_eval(x, running_mean, running_var, weight, bias, eps, act, act_param)
    if _fwAD._current_level >= 0:
        running_mean, running_var = _primal(running_mean), _primal(running_var)
    if _composite((x, weight, bias)):
        return reference.bn_eval(x, running_mean.detach(), running_var.detach(), weight, bias, eps, act, act_param)
    op = _T_eval if torch.compiler.is_compiling() else _E_eval
    return op(x, running_mean, running_var, weight, bias, eps, act, act_param)


def bn_eval_unchecked(x, running_mean, running_var, weight, bias, eps, act="identity", act_param=0.0):
    """:func:`bn_eval` by the compiled CPU kernel without Python checks, or None.

    None when the call is not a plain eager one on the compiled kernels (then nothing ran), or
    when the kernel refuses the arguments — it refuses everything
    :func:`bnlab.functional.check_input` refuses, before it writes anything; the caller then
    takes its checking path, which raises bnlab's error. A layer's eval forward
    (``_BatchNorm.forward``) uses it to skip the checks' Python.
    """
    if _is_compiling() or _fwAD._current_level >= 0 or not x.is_cpu or _functorch_active():
        return None
    key = _state["cpu_key"] or _cpu_key()
    if key != _COMPILED_CPU:
        return None
    try:
        y = _E_eval(x, running_mean, running_var, weight, bias, eps, act, act_param)
    except (RuntimeError, ValueError, TypeError):
        return None
    _COUNTS[key] += 1
    return y


def bn_stats(x):
    """Per-channel ``(mean, var_biased)``, ``(C,)`` in the statistics dtype, not differentiable."""
    if _composite((x,)):
        mean, var = reference.bn_stats(x)
        return mean.detach(), var.detach()
    return _T_stats(x)


def bn_apply(x, mean, invstd, weight, bias, act="identity", act_param=0.0):
    """Elementwise pass with given statistics: ``act(γ·(x − mean)·invstd + β)``.

    ``mean``/``invstd`` are constants for autograd (Batch Renorm's stop-gradient,
    SyncBN's global statistics); gradients reach x, γ and β.
    """
    if _composite((x, weight, bias)):
        return reference.bn_apply(x, mean.detach(), invstd.detach(), weight, bias, act, act_param)
    return _T_apply(x, mean, invstd, weight, bias, act, act_param)


def bn_backward_reduce(grad_out, x, mean, invstd, weight, bias, act="identity", act_param=0.0):
    """``(Σ dz, Σ dz·x̂)`` per channel in float64, dz = dy·act'(z) (SyncBN's backward, part 1)."""
    return OPS.bn_backward_reduce(grad_out, x, mean, invstd, weight, bias, act, act_param)


def bn_backward_elemt(grad_out, x, mean, invstd, weight, bias, sum_dz, sum_dz_xhat, count,
                      act="identity", act_param=0.0):
    """dx = γ·invstd·(dz − Σdz/m − x̂·Σdz·x̂/m) with sums over ``count`` = m values (part 2)."""
    return OPS.bn_backward_elemt(grad_out, x, mean, invstd, weight, bias, sum_dz, sum_dz_xhat, int(count), act, act_param)


# a finished build in the cache is loaded now, so that a model loaded with
# torch.jit.load in a fresh process runs the compiled kernels too
if not os.environ.get("BNLAB_BACKEND", "").strip() == "reference":
    _loader.load_cached()
