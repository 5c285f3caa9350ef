"""Download + parse round trips against a local HTTP server on 127.0.0.1 (never the internet)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from bnlab.lab.data import ChecksumError, DataError, MissingDataError, load_dataset
from bnlab.lab.data import download as dl
from bnlab.lab.data import paths, sources

from data_fixtures import cifar_like, mnist_like, serve, source_for, write_tree

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for var in ("BNLAB_DATA", "BNLAB_DATA_URL", "XDG_CACHE_HOME", "BNLAB_DOWNLOAD_DEADLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(paths, "SYSTEM_DIRS", {})  # the machine's own copies stay out of these tests


def _fake(monkeypatch, name):
    """Generate tiny files for ``name``, patch the published checksums to theirs."""
    arrays, files = cifar_like() if name == "cifar10" else mnist_like()
    monkeypatch.setitem(sources.SOURCES, name, source_for(sources.SOURCES[name], files))
    return arrays, files


def _expected(name, arrays, split):
    images, labels = arrays[split]
    if name == "cifar10":
        return images.reshape(-1, 3, 32, 32), labels
    return images[:, None], labels.astype(np.int64)


def _leftovers(folder):
    return [f for f in os.listdir(folder) if f.startswith(".")] if folder.exists() else []


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_download_round_trip(tmp_path, monkeypatch, name):
    arrays, files = _fake(monkeypatch, name)
    write_tree(tmp_path / "www", files)
    data_dir = tmp_path / "cache"
    with serve(tmp_path / "www") as (url, log):
        for split in ("train", "test"):
            x, y = load_dataset(name, split, data_dir=data_dir, download=True,
                                dtype=torch.uint8, base_url=url, progress=False)
            ex, ey = _expected(name, arrays, split)
            assert x.dtype == torch.uint8 and y.dtype == torch.int64
            np.testing.assert_array_equal(x.numpy(), ex)
            np.testing.assert_array_equal(y.numpy(), ey)
            xf, _ = load_dataset(name, split, data_dir=data_dir, base_url=url)
            assert xf.dtype == torch.float32
            torch.testing.assert_close(xf, x.float() / 255, rtol=0, atol=0)
        # every official file fetched exactly once; later loads read the cache
        assert sorted(p.rsplit("/", 1)[-1] for p in log) == sorted(files)
    folder = data_dir / name
    assert sorted(os.listdir(folder)) == sorted(files)
    for f, content in files.items():
        assert (folder / f).read_bytes() == content


def test_env_mirror_layout_and_data_dir(tmp_path, monkeypatch):
    arrays, files = _fake(monkeypatch, "mnist")
    write_tree(tmp_path / "www" / "mnist", files)  # <BNLAB_DATA_URL>/<dataset>/<file>
    monkeypatch.setenv("BNLAB_DATA", str(tmp_path / "envcache"))
    with serve(tmp_path / "www") as (url, log):
        monkeypatch.setenv("BNLAB_DATA_URL", url)
        x, y = load_dataset("mnist", "test", download=True, progress=True)  # tqdm branch
    np.testing.assert_array_equal(y.numpy(), arrays["test"][1])
    assert (tmp_path / "envcache" / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()
    assert all(p.startswith("/mnist/") for p in log)


def test_corrupted_download_is_rejected_and_nothing_is_kept(tmp_path, monkeypatch):
    _, files = _fake(monkeypatch, "mnist")
    bad = dict(files)
    name = "train-labels-idx1-ubyte.gz"
    bad[name] = bytes([files[name][0] ^ 0xFF]) + files[name][1:]  # same size, one byte off
    write_tree(tmp_path / "www", bad)
    data_dir = tmp_path / "cache"
    with serve(tmp_path / "www") as (url, _):
        with pytest.raises(ChecksumError, match=f"{name}.*SHA-256") as info:
            load_dataset("mnist", "train", data_dir=data_dir, download=True, base_url=url,
                         progress=False)
    assert sources.SOURCES["mnist"].file(name).sha256 in str(info.value)  # names expected value
    folder = data_dir / "mnist"
    assert not (folder / name).exists() and _leftovers(folder) == []
    # the good image file that came first is kept: it was verified
    assert sorted(os.listdir(folder)) == ["train-images-idx3-ubyte.gz"]


def test_truncated_transfer_leaves_nothing(tmp_path, monkeypatch):
    _, files = _fake(monkeypatch, "mnist")
    write_tree(tmp_path / "www", files)
    data_dir = tmp_path / "cache"
    with serve(tmp_path / "www", truncate={"t10k-images-idx3-ubyte.gz"}) as (url, _):
        with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz(.|\n)*cut short") as info:
            load_dataset("mnist", "test", data_dir=data_dir, download=True, base_url=url,
                         progress=False)
    assert not isinstance(info.value, ChecksumError)  # a network problem, not a bad file
    folder = data_dir / "mnist"
    assert not folder.exists() or (os.listdir(folder) == [])


def test_mirror_fallback(tmp_path, monkeypatch):
    arrays, files = _fake(monkeypatch, "mnist")
    write_tree(tmp_path / "www" / "good", files)
    (tmp_path / "www" / "empty").mkdir()
    with serve(tmp_path / "www") as (url, log):
        x, y = load_dataset("mnist", "test", data_dir=tmp_path / "c", download=True,
                            base_url=[url + "empty/", url + "good/"], progress=False)
    np.testing.assert_array_equal(y.numpy(), arrays["test"][1])
    assert [p.split("/")[1] for p in log] == ["empty", "good"] * 2


def test_unreachable_lists_every_url(tmp_path, monkeypatch):
    _fake(monkeypatch, "mnist")
    (tmp_path / "www").mkdir()
    with serve(tmp_path / "www") as (url, _):
        with pytest.raises(DataError, match="tried:\n.*127.0.0.1.*404") as info:
            load_dataset("mnist", "test", data_dir=tmp_path / "c", download=True,
                         base_url=[url + "a/", url + "b/"], progress=False)
    assert "/a/" in str(info.value) and "/b/" in str(info.value)
    assert _leftovers(tmp_path / "c" / "mnist") == []


@pytest.mark.parametrize("name, missing", [
    ("mnist", ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]),
    ("cifar10", ["cifar-10-python.tar.gz"]),
])
def test_missing_files_error_names_files_and_directory(tmp_path, name, missing):
    with pytest.raises(MissingDataError) as info:
        load_dataset(name, "train", data_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message  # one line
    for f in missing:
        assert f in message
    assert str(tmp_path / name) + os.sep in message
    assert "--download" in message and "apt-get" not in message
    assert not (tmp_path / name).exists()  # nothing created when only looking


def test_existing_corrupt_file(tmp_path, monkeypatch):
    arrays, files = _fake(monkeypatch, "mnist")
    folder = tmp_path / "c" / "mnist"
    write_tree(folder, files)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(ChecksumError, match="t10k-labels.*delete it.*--download"):
        load_dataset("mnist", "test", data_dir=tmp_path / "c")
    write_tree(tmp_path / "www", files)
    with serve(tmp_path / "www") as (url, log):  # download=True replaces the bad file
        _, y = load_dataset("mnist", "test", data_dir=tmp_path / "c", download=True,
                            base_url=url, progress=False)
    np.testing.assert_array_equal(y.numpy(), arrays["test"][1])
    assert [p.rsplit("/", 1)[-1] for p in log] == ["t10k-labels-idx1-ubyte.gz"]


@pytest.mark.parametrize("url, ok", [
    ("https://example.org/x/", True), ("http://127.0.0.1:8/", True),
    ("http://localhost/", True), ("http://example.org/", False), ("file:///etc/", False),
    ("ftp://example.org/", False),
])
def test_only_https_or_loopback(url, ok):
    if ok:
        assert dl.candidate_urls(sources.MNIST, "f.gz", url) == [url.rstrip("/") + "/f.gz"]
    else:
        with pytest.raises(DataError, match="only https"):
            dl.candidate_urls(sources.MNIST, "f.gz", url)


def test_official_mirrors_are_https_and_specs_complete():
    for source in sources.SOURCES.values():
        assert all(m.startswith("https://") for m in source.mirrors)
        for spec in source.files:
            assert len(spec.sha256) == 64 and len(spec.md5) == 32 and spec.size > 0


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setattr(paths.Path, "home", staticmethod(lambda: tmp_path / "home"))
    assert paths.default_data_dir() == tmp_path / "home" / ".cache" / "bnlab"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert paths.default_data_dir() == tmp_path / "home" / ".cache" / "bnlab"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.default_data_dir() == tmp_path / "xdg" / "bnlab"
    monkeypatch.setenv("BNLAB_DATA", str(tmp_path / "data"))
    assert paths.default_data_dir() == tmp_path / "data"


def test_progress_is_quiet_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert dl._show_progress(None) is False
    assert dl._show_progress(True) is True


def test_bad_name_split_dtype(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", data_dir=tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist", "val", data_dir=tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        load_dataset("mnist", dtype=torch.int32, data_dir=tmp_path)


def test_verify_file_falls_back_to_md5(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    md5 = "900150983cd24fb0d6963f7d28e17f72"  # RFC 1321 test vector: MD5("abc")
    dl.verify_file(path, sources.FileSpec("f", 3, None, md5))
    with pytest.raises(ChecksumError, match="MD5"):
        dl.verify_file(path, sources.FileSpec("f", 3, None, "0" * 32))
    sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2 "abc"
    dl.verify_file(path, sources.FileSpec("f", 3, sha, "0" * 32))  # SHA-256 known: it decides
    with pytest.raises(ChecksumError, match="size 3 bytes, expected 4"):
        dl.verify_file(path, sources.FileSpec("f", 4, sha, None))


def test_data_command_fetch_verify_list(tmp_path, monkeypatch, capsys):
    from bnlab.lab.data.cli import main

    arrays, files = _fake(monkeypatch, "fashion-mnist")
    write_tree(tmp_path / "www", files)
    d = str(tmp_path / "d")
    assert main(["verify", "fashion-mnist", "--data-dir", d]) == 1  # nothing there yet
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bnlab data fetch fashion-mnist" in err
    with serve(tmp_path / "www") as (url, _):
        assert main(["fetch", "fashion-mnist", "--data-dir", d, "--base-url", url]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist train: (30, 1, 28, 28)" in out and "test: (20, 1, 28, 28)" in out
    assert main(["verify", "fashion-mnist", "--data-dir", d]) == 0  # offline check passes
    assert f"read from {tmp_path / 'd' / 'fashion-mnist'}" in capsys.readouterr().out
    (tmp_path / "d" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"x")
    assert main(["verify", "fashion-mnist", "--data-dir", d]) == 1
    assert "t10k-labels" in capsys.readouterr().err
    assert main(["download", "mnist", "--data-dir", d, "--base-url", "http://example.org/"]) == 1
    assert "only https" in capsys.readouterr().err
    assert main(["list", "--data-dir", d]) == 0
    out = capsys.readouterr().out
    assert "cifar10" in out and "not found" in out and str(tmp_path / "d" / "fashion-mnist") in out
    with pytest.raises(SystemExit) as info:
        main(["fetch", "imagenet"])
    assert info.value.code == 2
