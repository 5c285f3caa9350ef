"""Backend choice (set_backend, BNLAB_BACKEND) and the clean fallback when numba cannot run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import bnlab
from bnlab.kernels import numba_cpu, select


def _run(code: str, env: dict | None = None, timeout: int = 240) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, returned parsed."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=full_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


_FALLBACK_PROBE = """
    import json, sys, warnings
    {prelude}
    import torch, bnlab
    import torch.nn.functional as TF
    x = torch.randn(6, 3, 5, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = bnlab.BatchNorm2d(3)
        ys = [m(x) for _ in range(3)]
        xr = x.clone().requires_grad_()
        bnlab.BatchNorm2d(3)(xr).square().sum().backward()
    from bnlab.kernels import select
    msgs = [str(w.message) for w in caught if "numba" in str(w.message)]
    err = (ys[0] - TF.batch_norm(x, None, None, training=True)).abs().max().item()
    print(json.dumps(dict(warnings=msgs, selected=select(x).NAME, err=err, grad=xr.grad is not None)))
"""


@pytest.mark.parametrize("prelude", [
    "sys.modules['numba'] = None",                                   # numba not installed
    "import os; os.environ['BNLAB_DISABLE_NUMBA'] = '1'",             # switched off
], ids=["numba-missing", "disabled"])
def test_missing_numba_falls_back_with_one_warning(prelude):
    out = _run(_FALLBACK_PROBE.format(prelude=prelude))
    assert len(out["warnings"]) == 1 and "falling back" in out["warnings"][0]
    assert out["selected"] == "reference"
    assert out["err"] < 1e-5 and out["grad"]


def test_kernel_failure_falls_back_with_one_warning():
    """A kernel that fails to compile/run disables the backend once; results come from the reference."""
    prelude = """
    from bnlab.kernels import numba_cpu
    assert numba_cpu.is_available()
    from bnlab.kernels import _numba_kernels as K
    def broken(*a, **k):
        raise RuntimeError("simulated compilation failure")
    K.channel_sums = K.serial.channel_sums = broken
    """
    out = _run(_FALLBACK_PROBE.format(prelude=textwrap.dedent(prelude).replace("\n", "\n    ")))
    assert len(out["warnings"]) == 1 and "simulated" in out["warnings"][0]
    assert out["selected"] == "reference" and out["err"] < 1e-5 and out["grad"]


def test_env_var_selects_backend():
    code = """
    import json, torch, bnlab
    from bnlab.kernels import select
    print(json.dumps(dict(name=bnlab.get_backend(), sel=select(torch.randn(4, 3)).NAME)))
    """
    assert _run(code, {"BNLAB_BACKEND": "reference"}) == {"name": "reference", "sel": "reference"}
    assert _run(code, {"BNLAB_BACKEND": "numba"})["sel"] == ("numba" if numba_cpu.is_available() else "reference")


def test_set_backend_switches_and_validates():
    x = torch.randn(8, 4, 3)
    try:
        assert "numba" in bnlab.available_backends()
        bnlab.set_backend("reference")
        assert select(x).NAME == "reference"
        bnlab.set_backend("numba")
        assert select(x).NAME == ("numba" if numba_cpu.is_available() else "reference")
        with pytest.raises(ValueError, match="unknown bnlab backend"):
            bnlab.set_backend("cuda-magic")
    finally:
        bnlab.set_backend("auto")


def test_import_bnlab_does_not_import_numba():
    """The kernels load lazily: ``import bnlab`` stays cheap."""
    out = _run("import sys, json, bnlab; print(json.dumps('numba' in sys.modules))")
    assert out is False


@pytest.mark.skipif(not numba_cpu.is_available(), reason="numba kernels unavailable")
def test_compiled_kernels_are_cached_across_processes():
    """A second process loads machine code from the on-disk cache instead of compiling."""
    code = """
    import json, torch, bnlab
    from bnlab.kernels import numba_cpu, _numba_kernels as K
    x = torch.randn(64, 8, 4, 4)
    y, mean, var = numba_cpu.forward_train(x, None, None, 1e-5)
    z = torch.randn(4, 8, 1 << 17)                                   # above SERIAL_BELOW: threaded build
    numba_cpu.forward_train(z, None, None, 1e-5)
    st = [K.serial.channel_sums.stats, K.channel_sums.stats]
    print(json.dumps(dict(hits=min(sum(s.cache_hits.values()) for s in st),
                          misses=sum(sum(s.cache_misses.values()) for s in st))))
    """
    _run(code)                                                       # compiles and saves if needed
    out = _run(code)
    assert out["hits"] >= 1 and out["misses"] == 0


def test_read_only_package_dir_uses_user_cache(tmp_path):
    code = f"""
    import json, os
    os.environ.pop("NUMBA_CACHE_DIR", None)
    os.environ["XDG_CACHE_HOME"] = {str(tmp_path)!r}
    from bnlab.kernels import numba_cpu
    real_access = os.access
    os.access = lambda p, mode: False if "bnlab" in str(p) else real_access(p, mode)
    numba_cpu._cache_dir_fallback()
    print(json.dumps(os.environ.get("NUMBA_CACHE_DIR")))
    """
    assert _run(code) == str(tmp_path / "bnlab" / "numba")
    assert (tmp_path / "bnlab" / "numba").is_dir()
