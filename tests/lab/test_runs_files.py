"""Run-folder files never lie: atomic writes, hashed checkpoints, strict reads, locks, safe strings.

Unit tests of :mod:`bnlab.lab.runs` (no training): each names the failure it guards against.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

import bnlab
from bnlab.lab.runs.atomic import (DiskFullError, atomic_open, atomic_write_bytes, atomic_write_json,
                                   clean_temp_files)
from bnlab.lab.runs.checkpoint import CheckpointError, hash_path, load_checkpoint, save_checkpoint
from bnlab.lab.runs.identity import code_version, digest_sources, run_identity
from bnlab.lab.runs.lock import LOCK_NAME, RunLock, RunLockedError
from bnlab.lab.runs.resume import finished_results
from bnlab.lab.runs.runfiles import RunFileError, read_json, read_jsonl
from bnlab.lab.runs.safety import UnsafePathError, confined, escape_md

MALFORMED = {
    "empty": b"",
    "text": b"hello, I am not JSON\n",
    "null": b"null\n",
    "list": b"[1, 2]\n",
    "torn": b'{"verdict": "reprod',
    "non-utf8": b'{"a": "\xff\xfe"}',
}


# ---------------------------------------------------------------- atomic writes, full disk

def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "r" / "results.json"
    atomic_write_json(p, {"x": float("nan"), "t": (1, 2)})
    assert json.loads(p.read_text()) == {"x": None, "t": [1, 2]}
    assert sorted(x.name for x in p.parent.iterdir()) == ["results.json"]


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path):
    p = tmp_path / "config.json"
    atomic_write_bytes(p, b"old")
    with pytest.raises(ZeroDivisionError):
        with atomic_open(p) as f:
            f.write(b"new, half written")
            1 / 0
    assert p.read_bytes() == b"old" and [x.name for x in tmp_path.iterdir()] == ["config.json"]


@pytest.mark.parametrize("where", ["fsync", "write"])
def test_full_disk_is_one_clear_line_and_nothing_is_torn(tmp_path, monkeypatch, where):
    p = tmp_path / "results.json"
    atomic_write_bytes(p, b'{"old": true}')

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "fsync":
        monkeypatch.setattr(os, "fsync", full)
        ctx = pytest.raises(DiskFullError)
        with ctx as info:
            atomic_write_json(p, {"new": 1})
    else:  # the writer's own file object fails mid-write
        with pytest.raises(DiskFullError) as info:
            with atomic_open(p) as f:
                f.write(b"{")
                full()
    msg = str(info.value)
    assert "no space left on device" in msg and str(p) in msg and "\n" not in msg
    assert info.value.errno == errno.ENOSPC
    assert p.read_bytes() == b'{"old": true}' and [x.name for x in tmp_path.iterdir()] == ["results.json"]


def test_checkpoint_save_on_full_disk_names_the_file(tmp_path, monkeypatch):
    """torch.save straight into a file on a full disk said 'unexpected pos 2560 vs 2454'."""
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(DiskFullError, match="model.pt"):
        save_checkpoint(tmp_path / "model.pt", {"w": torch.ones(3)})
    assert not (tmp_path / "model.pt").exists()


def test_orphan_temp_files_are_cleaned(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    orphans = [tmp_path / ".results.json.abc123.tmp", tmp_path / "checkpoints" / ".model.pt.x1.tmp",
               tmp_path / ".train-images.gz.q.part"]
    for o in orphans:
        o.write_bytes(b"half")
    keep = [tmp_path / "results.json", tmp_path / "notes.tmp"]  # not hidden temp files of ours
    for k in keep:
        k.write_bytes(b"{}")
    assert clean_temp_files(tmp_path) == sorted(orphans)
    assert all(not o.exists() for o in orphans) and all(k.exists() for k in keep)


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip_with_sha256_beside_it(tmp_path):
    p = tmp_path / "model.pt"
    state = {"model": {"w": torch.arange(6.0)}, "step": 7}
    save_checkpoint(p, state)
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    assert hash_path(p).read_text() == f"{digest}  model.pt\n"  # sha256sum -c format
    back = load_checkpoint(p, require=("model", "step"))
    assert back["step"] == 7 and torch.equal(back["model"]["w"], state["model"]["w"])


def test_one_flipped_bit_is_refused(tmp_path):
    """A flipped bit turned a weight into -6.3e34 and the run resumed as if nothing happened."""
    p = tmp_path / "model.pt"
    save_checkpoint(p, {"model": {"w": torch.zeros(1000)}, "step": 1})
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its SHA-256") as info:
        load_checkpoint(p)
    assert "\n" not in str(info.value)


def test_checkpoint_without_its_hash_is_refused(tmp_path):
    p = tmp_path / "model.pt"
    torch.save({"model": {}, "step": 1}, p)
    with pytest.raises(CheckpointError, match="no model.pt.sha256"):
        load_checkpoint(p)


@pytest.mark.parametrize("kind", sorted(MALFORMED) + ["json-object"])
def test_malformed_checkpoint_is_one_line(tmp_path, kind):
    p = tmp_path / "model.pt"
    data = b"{}" if kind == "json-object" else MALFORMED[kind]
    p.write_bytes(data)
    hash_path(p).write_text(hashlib.sha256(data).hexdigest() + "  model.pt\n")  # hash matches: content is bad
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(p, require=("model", "step"))
    assert str(p) in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_that_is_not_a_dict_or_lacks_keys(tmp_path):
    for i, state in enumerate([[1, 2], {"model": {}}]):
        p = tmp_path / f"c{i}.pt"
        save_checkpoint(p, state)
        with pytest.raises(CheckpointError, match="not a bnlab training checkpoint"):
            load_checkpoint(p, require=("model", "step"))


class _Evil:
    def __reduce__(self):
        return (open, (os.environ["BNLAB_EVIL_PATH"], "w"))


def test_checkpoint_load_runs_no_pickled_code(tmp_path, monkeypatch):
    target = tmp_path / "pwned"
    monkeypatch.setenv("BNLAB_EVIL_PATH", str(target))
    p = tmp_path / "model.pt"
    save_checkpoint(p, {"model": {}, "step": 1, "x": _Evil()})  # hash is right: only weights_only stops it
    target.unlink(missing_ok=True)  # pickling does not call open; make sure
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(p)
    assert not target.exists()


# ---------------------------------------------------------------- strict reads

@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_json_is_one_line(tmp_path, kind):
    p = tmp_path / "results.json"
    p.write_bytes(MALFORMED[kind] if kind != "non-utf8" else b"\xff\xfe{}")
    with pytest.raises(RunFileError) as info:
        read_json(p)
    assert str(p) in str(info.value) and "\n" not in str(info.value)


def test_jsonl_keeps_only_object_records(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_bytes(b'{"step": 1}\nnull\n\n[1]\n7\n{"step": 2, "run": "bn\xff"}\n{"step": 3, "tr')
    recs = read_jsonl(p)
    assert [r["step"] for r in recs] == [1, 2] and recs[1]["run"].startswith("bn")
    assert read_jsonl(tmp_path / "missing.jsonl") == []


# ---------------------------------------------------------------- reuse only the same run

def _stamp(path, identity, **extra):
    atomic_write_json(path, {"identity": identity, **extra})


def test_results_of_another_preset_are_not_reused(tmp_path):
    """tiny finished, quick started and was killed (config.json = quick), quick again: tiny's
    numbers were reported as quick's. Reuse now needs results.json's own identity to match."""
    tiny = run_identity("experiment", "fig1", "tiny", {"steps": 60, "lr": 0.5})
    quick = run_identity("experiment", "fig1", "quick", {"steps": 3000, "lr": 0.5})
    _stamp(tmp_path / "results.json", tiny, verdict="reproduced", preset="tiny")
    _stamp(tmp_path / "config.json", quick, preset="quick")  # the killed quick run wrote this first
    assert finished_results(tmp_path, quick) is None
    assert finished_results(tmp_path, tiny)["preset"] == "tiny"


def test_identity_covers_every_field_and_the_code(monkeypatch):
    a = run_identity("experiment", "fig1", "quick", {"steps": 10, "lr": 0.1, "threads": 1})
    assert a == run_identity("experiment", "fig1", "quick", {"steps": 10, "lr": 0.1, "threads": 4})
    assert a != run_identity("experiment", "fig1", "quick", {"steps": 10, "lr": 0.2, "threads": 1})
    assert a != run_identity("experiment", "fig1", "paper", {"steps": 10, "lr": 0.1, "threads": 1})
    import bnlab.lab.runs.identity as ident
    monkeypatch.setattr(ident, "source_digest", lambda: "0" * 64)  # an edited checkout
    b = run_identity("experiment", "fig1", "quick", {"steps": 10, "lr": 0.1, "threads": 1})
    assert b["code"].endswith("+000000000000") and b != a


def test_code_version_changes_with_any_source_byte(tmp_path):
    (tmp_path / "pkg" / "kernels").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "kernels" / "k.cpp").write_text("int f();\n")
    before = digest_sources(tmp_path / "pkg")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"cache")
    (tmp_path / "pkg" / "notes.txt").write_text("not source")
    assert digest_sources(tmp_path / "pkg") == before
    (tmp_path / "pkg" / "kernels" / "k.cpp").write_text("int g();\n")
    assert digest_sources(tmp_path / "pkg") != before
    assert code_version().startswith(bnlab.__version__ + "+") and len(code_version().split("+")[1]) == 12


@pytest.mark.parametrize("kind", sorted(MALFORMED) + ["no-identity"])
def test_malformed_results_are_rebuilt_not_reported(tmp_path, kind):
    ident = run_identity("experiment", "fig1", "tiny", {"steps": 60})
    data = b'{"networks": {}, "verdict": "reproduced"}' if kind == "no-identity" else MALFORMED[kind]
    (tmp_path / "results.json").write_bytes(data)
    assert finished_results(tmp_path, ident) is None


# ---------------------------------------------------------------- one writer per folder

def test_second_writer_is_refused_and_lock_released(tmp_path):
    with RunLock(tmp_path / "run") as first:
        assert (tmp_path / "run" / LOCK_NAME).exists()
        with pytest.raises(RunLockedError, match=rf"pid {os.getpid()}") as info:
            RunLock(tmp_path / "run").acquire()
        assert "--out" in str(info.value)
        assert first.stale_pid is None
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with RunLock(tmp_path / "run"):
        pass


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": "x"}))
    with RunLock(tmp_path) as lock:
        assert lock.stale_pid == dead.pid


def test_lock_held_by_another_process_is_seen(tmp_path):
    code = ("import sys,time; from bnlab.lab.runs.lock import RunLock; l=RunLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"pid {holder.pid}"):
            RunLock(tmp_path).acquire()
        with pytest.raises(RunLockedError, match=rf"pid {holder.pid}"):  # a run inside its folder, too
            RunLock(tmp_path / "fig1").acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path) as lock:  # the kernel dropped the dead holder's lock
        assert lock.stale_pid == holder.pid


# ---------------------------------------------------------------- strings and paths from run files

@pytest.mark.parametrize("text", [
    "<script>alert(1)</script>", "[click](http://evil.example)", "![x](../../etc/passwd)",
    "a | b | c", "**bold** _it_ `code`", "# heading", "- item", "1. item", "line one\nline two",
    "&lt;img src=x onerror=alert(1)&gt;", "~~gone~~",
])
def test_escape_md_leaves_no_markup(text):
    out = escape_md(text)
    assert "\n" not in out
    for ch in "<>[]|*_`~&!":
        assert all(out[i - 1] == "\\" for i, c in enumerate(out) if c == ch), (text, out)
    assert not out.startswith(("#", "- ", "1. "))
    assert out.replace("\\", "") == " ".join(text.splitlines())  # nothing lost but the escapes


def test_escape_md_keeps_numbers_and_paths_readable():
    assert escape_md("0.936 at step 3000 in runs/fig1-quick") == "0.936 at step 3000 in runs/fig1-quick"


@pytest.mark.parametrize("rel", ["/etc/passwd", "../outside.png", "figs/../../x.png", "..", "C:\\x.png", ""])
def test_figure_paths_outside_the_run_folder_are_refused(tmp_path, rel):
    with pytest.raises(UnsafePathError):
        confined(tmp_path / "run", rel)


def test_figure_symlink_leaving_the_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (run / "fig.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(UnsafePathError, match="outside"):
        confined(run, "fig.png")
    (run / "ok.png").write_bytes(b"x")
    assert confined(run, "ok.png") == (run / "ok.png").resolve()
    assert confined(run, "sub/dir/a.png") == (run / "sub" / "dir" / "a.png").resolve()


# ---------------------------------------------------------------- a checkpoint continues only its own run

def test_check_resume_refuses_shortening_and_other_settings(tmp_path):
    from bnlab.lab.config import ConfigError
    from bnlab.lab.runs.resume import check_resume

    fp = {"lr": 0.1, "optimizer": "sgd"}
    path = tmp_path / "model.pt"
    check_resume({"fingerprint": dict(fp), "step": 20}, fp, 20, path)  # finished run, same steps: fine
    check_resume({"fingerprint": dict(fp), "step": 20}, fp, 30, path)  # extension: fine
    with pytest.raises(ConfigError, match="already holds 20 steps, more than --steps 10"):
        check_resume({"fingerprint": dict(fp), "step": 20}, fp, 10, path)
    with pytest.raises(ConfigError, match=r"other settings \(\['lr'\]\)"):
        check_resume({"fingerprint": {**fp, "lr": 0.2}, "step": 5}, fp, 10, path)
    with pytest.raises(RunFileError, match="no valid step"):
        check_resume({"fingerprint": dict(fp), "step": "5"}, fp, 10, path)


def test_fit_refuses_a_checkpoint_with_more_steps(tmp_path):
    """The engine's own guard (behind the CLI's): fit(resume=True) never saves 'step 10' over 20 steps' weights."""
    from torch import nn

    from bnlab.lab.config import ConfigError
    from bnlab.lab.engine.train import LoopConfig, fit

    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    model = nn.Linear(4, 2)
    cfg = LoopConfig(steps=20, batch_size=16, eval_every=10, ckpt_every=10)
    fit(model, (x, y), (x, y), cfg, tmp_path, val=(x, y))
    ckpt = tmp_path / "checkpoints" / "model.pt"
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    with pytest.raises(ConfigError, match="more than --steps 10"):
        fit(nn.Linear(4, 2), (x, y), (x, y), dataclasses.replace(cfg, steps=10), tmp_path, val=(x, y), resume=True)
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("writes_done,step", [(0, 1), (1, 1), (2, 2)])
def test_checkpoint_verifies_whenever_a_save_is_killed(tmp_path, monkeypatch, writes_done, step):
    """A SIGKILL between writing model.pt and model.pt.sha256 left a checkpoint that could not resume."""
    import bnlab.lab.runs.checkpoint as ck

    p = tmp_path / "model.pt"
    save_checkpoint(p, {"step": 1})
    done = []

    def dies_after(write):
        def wrapped(path, content):
            if len(done) == writes_done:
                raise KeyboardInterrupt  # the process is killed here
            done.append(path)
            return write(path, content)
        return wrapped

    monkeypatch.setattr(ck, "atomic_write_text", dies_after(ck.atomic_write_text))
    monkeypatch.setattr(ck, "atomic_write_bytes", dies_after(ck.atomic_write_bytes))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(p, {"step": 2})
    assert load_checkpoint(p)["step"] == step  # the old checkpoint, or the new one: never unverifiable


def test_a_process_may_lock_a_folder_inside_its_own_locked_folder(tmp_path):
    with RunLock(tmp_path / "rep"):
        with RunLock(tmp_path / "rep" / "fig1"):  # reproduce locks each experiment's folder too
            with pytest.raises(RunLockedError):
                RunLock(tmp_path / "rep" / "fig1").acquire()
