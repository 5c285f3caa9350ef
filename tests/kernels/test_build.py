"""The C++ extension's build: cache key, lock against concurrent first use, the no-compiler fallback."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import bnlab
from bnlab.kernels import _loader

SRC = os.path.dirname(os.path.dirname(bnlab.__file__))


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300)


def test_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("BNLAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _loader.cache_root() == str(tmp_path / "xdg" / "bnlab")
    monkeypatch.setenv("BNLAB_CACHE", str(tmp_path / "mine"))
    assert _loader.build_dir().startswith(str(tmp_path / "mine" / "ext"))


def test_cache_key_names_torch_and_instruction_set(monkeypatch):
    import torch

    name = os.path.basename(_loader.build_dir())
    assert name.startswith(f"{torch.__version__}-{_loader.isa()}-")
    monkeypatch.setenv("BNLAB_ISA", "baseline")
    assert _loader.isa() == "baseline"
    assert "-baseline-" in os.path.basename(_loader.build_dir()) and _loader.build_dir() != name
    flags = _loader.cflags("baseline")
    assert not any(f.startswith("-m") for f in flags) and "-march=native" not in flags
    assert "-mavx2" in _loader.cflags("avx2")


_BUILDER = """
import json, os, sys, time
from torch.utils import cpp_extension
from bnlab.kernels import _loader

def fake_load(name, sources, build_directory, **kw):      # stands in for the compiler
    with open(os.path.join(sys.argv[1], "builds.txt"), "a") as f:
        f.write(str(os.getpid()) + "\\n")
    time.sleep(1.5)
    open(os.path.join(build_directory, name + ".so"), "wb").close()

cpp_extension.load = fake_load
_loader._load = lambda path: _loader._state.update(loaded=True, path=path)
_loader._state.update(loaded=None, error=None)
print(json.dumps(_loader.ensure()))
"""


def test_concurrent_first_use_builds_once(tmp_path):
    """Two processes starting on an empty cache: one builds, the other waits and loads that build."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               BNLAB_CACHE=str(tmp_path / "cache"))
    env.pop("BNLAB_DISABLE_EXTENSION", None)
    procs = [subprocess.Popen([sys.executable, "-c", _BUILDER, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert [json.loads(o[0].strip().splitlines()[-1]) for o in outs] == [True, True]
    assert len((tmp_path / "builds.txt").read_text().split()) == 1
    compiling = [o[1] for o in outs if "compiling the C++ kernels" in o[1]]
    assert len(compiling) == 1 and "compiled in" in compiling[0]


_NO_EXT = """
import json, warnings, torch
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import bnlab
    from bnlab import kernels as K
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    for _ in range(3):
        y = K.bn_train(x, None, None, None, None, None, 0.1, 1e-5)[0]
    ok = torch.autograd.gradcheck(lambda x: K.bn_train(x, None, None, None, None, None, 0.1, 1e-5)[0], (x,))
    ok2 = torch.autograd.gradgradcheck(lambda x: K.bn_train(x, None, None, None, None, None, 0.1, 1e-5)[0], (x,))
    tr = torch.jit.trace(lambda x: K.bn_eval(x, torch.zeros(3), torch.ones(3), None, None, 1e-5), torch.randn(2, 3))
    try:
        bnlab.set_backend("compiled")
        refused = False
    except ValueError as err:
        refused = "not available" in str(err)
warned = [str(w.message) for w in caught if "compiled CPU kernels are unavailable" in str(w.message)]
print(json.dumps({"warned": len(warned), "backends": K.available_backends(), "grad": ok and ok2,
                  "traced": "bnlab::bn_eval" in str(tr.graph), "refused": refused,
                  "counts": {"/".join(k): v for k, v in K.path_counts().items()}}))
"""


def test_without_the_extension_the_same_ops_run_the_reference_with_one_warning():
    out = _run(_NO_EXT, BNLAB_DISABLE_EXTENSION="1")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["warned"] == 1 and res["backends"] == ["reference"] and res["grad"] and res["traced"] and res["refused"]
    assert res["counts"]["reference/no_extension"] >= 4


def test_import_never_compiles(tmp_path):
    out = _run("import bnlab, bnlab.kernels as K, json; print(json.dumps(K.extension_status()))",
               BNLAB_CACHE=str(tmp_path / "empty"))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["loaded"] is False
    assert not (tmp_path / "empty" / "ext").exists() and "compiling" not in out.stderr


@pytest.mark.skipif("compiled" not in bnlab.available_backends(), reason="no compiler here")
def test_the_cached_build_loads_at_import():
    out = _run("import bnlab.kernels as K, json; print(json.dumps(K.extension_status()))")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["loaded"] is True


def test_cache_key_follows_every_source_file(monkeypatch, tmp_path):
    """Editing a .cpp or a header gives another build directory (never a stale build)."""
    import shutil

    src = tmp_path / "csrc"
    shutil.copytree(_loader.CSRC, src)
    monkeypatch.setattr(_loader, "CSRC", str(src))
    first = _loader.build_dir()
    for name in sorted(os.listdir(src)):
        with open(src / name, "a") as f:
            f.write("\n// edited\n")
        assert _loader.build_dir() != first, name
        first = _loader.build_dir()
