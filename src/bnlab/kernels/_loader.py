"""Build, cache and load the C++ extension that implements the ``bnlab`` operators on CPU.

The sources in ``csrc/`` are compiled on first use with ``torch.utils.cpp_extension``
(gcc + ninja + torch's own headers) into a cache directory keyed by the sources, the
torch version and the instruction set, then loaded with ``torch.ops.load_library``:
the shared object only registers kernels (``TORCH_LIBRARY_IMPL``) for the operators
that :mod:`._schema` defines. Later processes find the cached build and only load it.

* cache: ``$BNLAB_CACHE`` or ``$XDG_CACHE_HOME/bnlab`` or ``~/.cache/bnlab``, then
  ``ext/<torch version>-<isa>-<hash>/``;
* instruction set: AVX2+FMA when the CPU has it (the key says so), else the portable
  baseline; ``BNLAB_ISA=baseline`` forces the baseline;
* concurrent first use (pytest workers, DDP ranks): an exclusive file lock around
  the build; a build counts only once its ``built`` marker exists;
* threads: compiled with ``-fopenmp`` but not linked to any OpenMP library, so
  ``at::parallel_for`` runs on the OpenMP runtime torch itself loaded (its pool);
* ``BNLAB_DISABLE_EXTENSION=1``: never build nor load (the reference kernels run).
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import shutil
import sys
import time

import torch

NAME = "bnlab_C"
CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
_state: dict = {"loaded": None, "error": None, "path": None}


def cache_root() -> str:
    """Where builds are cached: ``$BNLAB_CACHE``, ``$XDG_CACHE_HOME/bnlab`` or ``~/.cache/bnlab``."""
    if os.environ.get("BNLAB_CACHE"):
        return os.environ["BNLAB_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bnlab")


def sources() -> list[str]:
    return sorted(glob.glob(os.path.join(CSRC, "*.cpp")))


def isa() -> str:
    """``"avx2"`` when this CPU runs AVX2+FMA (and it is not disabled), else ``"baseline"``."""
    if os.environ.get("BNLAB_ISA", "").strip().lower() == "baseline":
        return "baseline"
    cap = torch.backends.cpu.get_cpu_capability()
    return "avx2" if cap in ("AVX2", "AVX512") else "baseline"


def cflags(which: str) -> list[str]:
    # -fno-math-errno: std::sqrt need not set errno, so the per-channel loops (σ⁻¹ of every
    # channel) vectorize; the results are the same correctly rounded square roots
    flags = ["-O3", "-fno-math-errno", "-fopenmp", "-std=c++17", "-DNDEBUG"]
    if which == "avx2":
        return flags + ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return flags + ["-DCPU_CAPABILITY=DEFAULT"]


def _compiler() -> str | None:
    cxx = os.environ.get("CXX", "c++")
    return shutil.which(cxx) or shutil.which("g++")


def build_dir() -> str:
    which = isa()
    h = hashlib.sha256()
    for path in sources() + sorted(glob.glob(os.path.join(CSRC, "*.h"))):   # headers are part of the build
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    h.update(" ".join(cflags(which)).encode())
    h.update(torch.__version__.encode())
    h.update(str(torch._C._GLIBCXX_USE_CXX11_ABI).encode())
    h.update(sys.version.split()[0].encode())
    return os.path.join(cache_root(), "ext", f"{torch.__version__}-{which}-{h.hexdigest()[:16]}")


def _so(directory: str) -> str:
    return os.path.join(directory, NAME + ".so")


def _built(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, "built")) and os.path.exists(_so(directory))


def _load(path: str) -> None:
    torch.ops.load_library(path)
    _state.update(loaded=True, path=path)


def load_cached() -> bool:
    """Load the extension if a finished build is cached (cheap; never compiles)."""
    if _state["loaded"] is not None:
        return bool(_state["loaded"])
    if os.environ.get("BNLAB_DISABLE_EXTENSION") or not sources():
        return False
    try:
        d = build_dir()
        if _built(d):
            _load(_so(d))
            return True
    except Exception as err:  # a broken cache entry: a build will replace it
        _state["error"] = err
    return False


def unavailable_reason() -> str | None:
    """Why the extension cannot be built here, or ``None``."""
    if os.environ.get("BNLAB_DISABLE_EXTENSION"):
        return "disabled by BNLAB_DISABLE_EXTENSION"
    if not sources():
        return "no C++ sources found"
    if _state["loaded"] is False:
        return f"build failed ({type(_state['error']).__name__}: {_state['error']})"
    if _state["loaded"]:
        return None
    if _built(build_dir()):
        return None
    if _compiler() is None:
        return "no C++ compiler found (install g++, or set CXX)"
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


def ensure(verbose: bool = False) -> bool:
    """Load the extension, building it first if needed. False (with the error kept) on failure."""
    if _state["loaded"] is not None:
        return bool(_state["loaded"])
    if load_cached():
        return True
    reason = unavailable_reason()
    if reason is not None:
        _state.update(loaded=False, error=RuntimeError(reason))
        return False
    try:
        _build(verbose)
        return True
    except Exception as err:
        _state.update(loaded=False, error=err)
        return False


def _build(verbose: bool) -> None:
    from torch.utils import cpp_extension

    d = build_dir()
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)                              # one builder at a time
        try:
            if not _built(d):
                t0 = time.perf_counter()
                print(f"bnlab: compiling the C++ kernels (once; cached in {d}) ...", file=sys.stderr, flush=True)
                cpp_extension.load(
                    name=NAME, sources=sources(), build_directory=d, extra_cflags=cflags(isa()),
                    extra_include_paths=[CSRC], is_python_module=False, verbose=verbose,
                )
                with open(os.path.join(d, "built.tmp"), "w") as f:
                    f.write(f"{time.perf_counter() - t0:.1f} s\n")
                os.replace(os.path.join(d, "built.tmp"), os.path.join(d, "built"))
                print(f"bnlab: C++ kernels compiled in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
                _state.update(loaded=True, path=_so(d))
            else:
                _load(_so(d))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def status() -> dict:
    return {"loaded": bool(_state["loaded"]), "path": _state["path"],
            "error": None if _state["error"] is None else str(_state["error"])}
