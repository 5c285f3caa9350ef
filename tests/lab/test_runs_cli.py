"""Run folders that never lie, end to end through the ``bnlab`` command (``bnlab train``).

Each test is one way a run folder used to report something false while exiting 0:
resuming with other settings, shortening or over-extending a finished run, a corrupt
checkpoint, two writers, a full disk, orphan temp files, a failed run's leftovers, a
frozen rank. Runs are tiny MLPs on the embedded MNIST subset (~1 s each).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from bnlab.lab.cli import main
from bnlab.lab.runs.lock import LOCK_NAME, RunLock
from bnlab.lab.runs.runfiles import read_json, read_jsonl

FAST = ["--model", "mnist-mlp", "--norm", "batch", "--optimizer", "adam", "--lr", "0.01",
        "--batch-size", "32", "--eval-every", "10", "--ckpt-every", "10", "--threads", "1"]


def cli(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code


def train(out, steps, *extra) -> int:
    return cli("train", *FAST, "--steps", steps, "--out", out, *extra)


def _sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_resume_with_fewer_steps_is_refused_and_nothing_changes(tmp_path, capsys):
    """--resume --steps 100 on a finished 200-step run saved 'step 100' holding step-200 weights."""
    out = tmp_path / "run"
    assert train(out, 20) == 0
    ckpt, before = out / "checkpoints" / "model.pt", (out / "results.json").read_bytes()
    digest = _sha(ckpt)
    capsys.readouterr()
    assert train(out, 10, "--resume") == 2
    assert "steps 20 -> 10" in _one_line_error(capsys)
    assert train(out, 10, "--resume", "--extend") == 2
    assert "--steps must exceed the 20 steps" in _one_line_error(capsys)
    assert _sha(ckpt) == digest and (out / "results.json").read_bytes() == before


def test_resume_with_other_settings_is_refused_even_with_extend(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, 20) == 0
    capsys.readouterr()
    assert cli("train", *FAST[:-6], "--lr", "0.02", "--eval-every", "10", "--ckpt-every", "10",
               "--threads", "1", "--steps", "30", "--out", out, "--resume", "--extend") == 2
    err = _one_line_error(capsys)
    assert "lr 0.01 -> 0.02" in err and "--out" in err
    assert cli("train", *FAST, "--steps", "30", "--out", out, "--extend") == 2  # --extend alone
    assert "together with --resume" in _one_line_error(capsys)


def test_extension_trains_exactly_the_added_steps(tmp_path):
    """Extending 200 -> 300 after a bad resume trained 400 steps and reported 300.
    Oracle: 20 steps then --extend to 40 equals one uninterrupted 40-step run, record for record."""
    ext, ref = tmp_path / "ext", tmp_path / "ref"
    assert train(ext, 20) == 0
    assert train(ext, 40, "--resume", "--extend") == 0
    assert train(ref, 40) == 0
    got, want = read_json(ext / "results.json"), read_json(ref / "results.json")
    assert got["steps"] == want["steps"] == 40
    assert [h["step"] for h in got["history"]] == [10, 20, 30, 40]
    for a, b in zip(got["history"], want["history"]):
        assert a["test_acc"] == b["test_acc"] and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    assert [r["step"] for r in read_jsonl(ext / "metrics.jsonl")] == [10, 20, 30, 40]
    assert read_json(ext / "config.json")["config"]["steps"] == 40
    assert train(ext, 40, "--resume") == 0  # resuming a finished run with its settings trains nothing more
    assert read_json(ext / "results.json")["history"] == got["history"]


def test_flipped_bit_in_checkpoint_stops_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, 20) == 0
    ckpt = out / "checkpoints" / "model.pt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 3] ^= 0x01
    ckpt.write_bytes(bytes(data))
    capsys.readouterr()
    assert train(out, 20, "--resume") == 1
    assert "does not match its SHA-256" in _one_line_error(capsys)


DAMAGED = [b"", b"not a checkpoint", b"null", b"{}", b"\xff\xfe\x00 not utf-8"]


@pytest.mark.parametrize("content", DAMAGED)
@pytest.mark.parametrize("name,code", [("checkpoints/model.pt", 1), ("config.json", 2)])
def test_damaged_run_file_on_resume_is_one_line(tmp_path, capsys, name, code, content):
    """Empty, text, `null`, `{}` or non-UTF-8 files gave tracebacks or `KeyError: networks`."""
    out = tmp_path / "run"
    assert train(out, 10) == 0
    (out / name).write_bytes(content)
    if name.endswith(".pt"):  # a matching hash: what is refused is the content itself
        (out / (name + ".sha256")).write_text(hashlib.sha256(content).hexdigest() + "  model.pt\n")
    capsys.readouterr()
    assert train(out, 10, "--resume") == code
    assert name.split("/")[-1] in _one_line_error(capsys)


def test_second_writer_into_the_same_out_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with RunLock(out):
        assert train(out, 10) == 1
        assert "being written by another bnlab" in _one_line_error(capsys)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # the refused run wrote nothing


def test_stale_lock_and_orphan_temp_files_are_cleaned(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid}))
    orphans = [out / ".results.json.k3j2.tmp", out / "checkpoints" / ".model.pt.x9.tmp"]
    for o in orphans:
        o.write_bytes(b"half-written by a killed run")
    assert train(out, 10) == 0
    assert f"pid {dead.pid}" in capsys.readouterr().out
    assert not any(o.exists() for o in orphans) and not (out / LOCK_NAME).exists()


def test_full_disk_is_one_clear_line(tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert train(tmp_path / "run", 10) == 1
    err = _one_line_error(capsys)
    assert "no space left on device" in err and "config.json" in err


def test_failed_run_leaves_no_folder_behind(tmp_path, capsys, monkeypatch):
    import bnlab.lab.engine.train_job as tj

    def boom(*a, **k):
        raise RuntimeError("training exploded")

    monkeypatch.setattr(tj, "fit", boom)
    out = tmp_path / "new" / "run"
    assert train(out, 10) == 1
    assert "training exploded" in _one_line_error(capsys)
    assert not (tmp_path / "new").exists()  # not even a folder with only config.json


def test_stale_results_of_another_run_are_removed_at_start(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert train(out, 10) == 0
    import bnlab.lab.engine.train_job as tj

    (out / "tb" / "run").mkdir(parents=True, exist_ok=True)
    (out / "tb" / "run" / "events.out.tfevents.1.old").write_bytes(b"an earlier run's curves")
    monkeypatch.setattr(tj, "fit", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert train(out, 20) == 130  # killed: the 10-step results.json must not stand for this run
    assert not (out / "results.json").exists() and not (out / "tb").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_frozen_rank_times_out_after_timeout_not_30_minutes(tmp_path):
    """Rank 1 joins the process group, then never takes part in a collective."""
    env = {**os.environ, "CI": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "BNLAB_THREADS": "1"}
    frozen = ("import datetime, time, torch.distributed as d; "
              "d.init_process_group('gloo', timeout=datetime.timedelta(seconds=60)); time.sleep(60)")
    stuck = subprocess.Popen([sys.executable, "-c", frozen], env={**env, "RANK": "1", "LOCAL_RANK": "1"})
    try:
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "bnlab", "train", *FAST, "--steps", "10", "--timeout", "3",
                            "--out", str(tmp_path / "run")], env={**env, "RANK": "0", "LOCAL_RANK": "0"},
                           capture_output=True, text=True, timeout=120)
        waited = time.monotonic() - t0
    finally:
        stuck.kill()
        stuck.wait()
    assert p.returncode == 1, p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "--timeout 3 s" in err[0] and "Traceback" not in p.stderr
    assert waited < 60
