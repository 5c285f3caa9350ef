"""Fashion-MNIST from a system copy (Debian's dataset-fashion-mnist): search order, checks, CI's real files.

The first tests use a fake system folder (tiny files re-gzipped with another header, as
Debian's are) so they run everywhere; the last reads the real package when it is installed
(CI installs it) and skips, saying how to install it, where it is not.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bnlab.lab.data import ChecksumError, MissingDataError, load_dataset
from bnlab.lab.data import paths, sources

from data_fixtures import encode_idx, serve, write_tree

pytestmark = pytest.mark.timeout(120)
SYSTEM = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _gz(raw: bytes, name: str | None, mtime: int) -> bytes:
    """gzip bytes of ``raw`` with a chosen header (stored file name, timestamp)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename=name or "", mode="wb", fileobj=buf, mtime=mtime) as gz:
        gz.write(raw)
    return buf.getvalue()


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Tiny 'official' files (with a stored name) and 'Debian' copies (name dropped, new mtime)."""
    for var in ("BNLAB_DATA", "BNLAB_DATA_URL", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    rng = np.random.default_rng(3)
    raw = {}
    for f in FILES:
        n = 12 if f.startswith("train") else 8
        array = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) if "images" in f \
            else rng.integers(0, 10, n).astype(np.uint8)
        raw[f] = (array, encode_idx(array))
    official = {f: _gz(r, f[:-3], 1_500_000_000) for f, (_, r) in raw.items()}
    debian = {f: _gz(r, None, 1_591_348_000) for f, (_, r) in raw.items()}
    specs = tuple(sources.FileSpec(f, len(official[f]), hashlib.sha256(official[f]).hexdigest(),
                                   hashlib.md5(official[f]).hexdigest(), len(raw[f][1]),
                                   hashlib.sha256(raw[f][1]).hexdigest()) for f in FILES)
    monkeypatch.setitem(sources.SOURCES, "fashion-mnist",
                        replace(sources.FASHION_MNIST, files=specs))
    system = tmp_path / "usr-share" / "fashion-mnist"
    write_tree(system, debian)
    monkeypatch.setattr(paths, "SYSTEM_DIRS", {"fashion-mnist": (system,)})
    return {"raw": raw, "official": official, "debian": debian, "system": system}


def _check(x, y, fake, split):
    prefix = "train" if split == "train" else "t10k"
    np.testing.assert_array_equal(x[:, 0].numpy(), fake["raw"][f"{prefix}-images-idx3-ubyte.gz"][0])
    np.testing.assert_array_equal(y.numpy(), fake["raw"][f"{prefix}-labels-idx1-ubyte.gz"][0])


def test_system_copy_used_when_data_dir_lacks_it(tmp_path, fake):
    assert fake["debian"][FILES[0]] != fake["official"][FILES[0]]  # .gz hash cannot match
    for split in ("train", "test"):
        x, y = load_dataset("fashion-mnist", split, data_dir=tmp_path / "cache", dtype=torch.uint8)
        _check(x, y, fake, split)
    assert not (tmp_path / "cache").exists()  # read in place: nothing copied or created


def test_data_dir_comes_first(tmp_path, fake, monkeypatch):
    mine = tmp_path / "env"
    write_tree(mine / "fashion-mnist", fake["official"])
    (fake["system"] / FILES[3]).write_bytes(b"broken")  # would fail if it were read
    monkeypatch.setenv("BNLAB_DATA", str(mine))
    x, y = load_dataset("fashion-mnist", "test", dtype=torch.uint8)
    _check(x, y, fake, "test")


def test_recompressed_copy_in_data_dir_is_accepted(tmp_path, fake):
    write_tree(tmp_path / "d" / "fashion-mnist", fake["debian"])
    x, y = load_dataset("fashion-mnist", "train", data_dir=tmp_path / "d", dtype=torch.uint8)
    _check(x, y, fake, "train")


def test_changed_system_file_is_rejected_then_replaced_by_download(tmp_path, fake):
    array, raw = fake["raw"][FILES[3]]
    changed = bytearray(raw)
    changed[-1] = (changed[-1] + 1) % 10  # a valid IDX file, one label different
    (fake["system"] / FILES[3]).write_bytes(_gz(bytes(changed), None, 7))
    with pytest.raises(ChecksumError, match=f"{FILES[3]}.*decompressed SHA-256.*apt-get install "
                                            "--reinstall dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "test", data_dir=tmp_path / "d")
    write_tree(tmp_path / "www", fake["official"])
    with serve(tmp_path / "www") as (url, log):
        x, y = load_dataset("fashion-mnist", "test", data_dir=tmp_path / "d", download=True,
                            base_url=url, progress=False, dtype=torch.uint8)
    _check(x, y, fake, "test")
    assert [p.rsplit("/", 1)[-1] for p in log] == [FILES[3]]
    assert (tmp_path / "d" / "fashion-mnist" / FILES[3]).read_bytes() == fake["official"][FILES[3]]


def test_absent_everywhere_says_how_to_get_it_in_one_line(tmp_path, fake):
    for f in FILES:
        (fake["system"] / f).unlink()
    with pytest.raises(MissingDataError) as info:
        load_dataset("fashion-mnist", "train", data_dir=tmp_path / "d")
    message = str(info.value)
    assert "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message and "--download" in message
    assert str(fake["system"]) in message and str(tmp_path / "d" / "fashion-mnist") in message


# Decompressed official files' MD5s as published with open-source loaders (an oracle
# independent of the SHA-256 values this package records).
RAW_MD5 = {"train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
           "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
           "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
           "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965"}


@pytest.mark.skipif(not all((SYSTEM / f).is_file() for f in FILES),
                    reason=f"Fashion-MNIST is not installed in {SYSTEM} "
                           "(apt-get install dataset-fashion-mnist; CI installs it)")
def test_real_debian_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.delenv("BNLAB_DATA", raising=False)
    for f in FILES:
        blob = (SYSTEM / f).read_bytes()
        spec = sources.FASHION_MNIST.file(f)
        data = gzip.decompress(blob)
        assert hashlib.sha256(data).hexdigest() == spec.raw_sha256 and len(data) == spec.raw_size
        assert hashlib.md5(data).hexdigest() == RAW_MD5[f]
        # Debian's gzip header lacks the stored file name: exactly len(name) + 1 bytes shorter
        assert hashlib.sha256(blob).hexdigest() != spec.sha256
        assert spec.size - len(blob) == len(f[:-3]) + 1
    x_train, y_train = load_dataset("fashion-mnist", "train", data_dir=tmp_path)
    x_test, y_test = load_dataset("fashion-mnist", "test", data_dir=tmp_path)
    assert x_train.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert torch.bincount(y_train, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(y_test, minlength=10).tolist() == [1000] * 10
    # Fashion-MNIST's widely quoted training-set pixel statistics: mean 0.2860, std 0.3530
    assert abs(x_train.mean().item() - 0.2860) < 5e-4
    assert abs(x_train.std().item() - 0.3530) < 5e-4
    assert not os.listdir(tmp_path)  # read in place from the system folder


def test_experiments_fall_back_to_the_embedded_digits_and_say_so(tmp_path, monkeypatch):
    from bnlab.lab.data.choose import choose_dataset, is_available
    from bnlab.lab.experiments.d2l_lenet import PRESETS
    from bnlab.lab.experiments.kit import data_note, used_dataset

    monkeypatch.setenv("BNLAB_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr(paths, "SYSTEM_DIRS", {})
    assert not is_available("fashion-mnist") and is_available("mnist-embedded")
    assert choose_dataset("fashion-mnist", "mnist-embedded") == "mnist-embedded"
    assert choose_dataset("fashion-mnist", "mnist-embedded", download=True) == "fashion-mnist"
    assert choose_dataset("fashion-mnist", "") == "fashion-mnist"  # no fallback: loading will say how to install
    quick = PRESETS["quick"]
    assert used_dataset(quick) == "mnist-embedded"
    note = data_note(quick)
    assert "fell back to mnist-embedded" in note and "apt-get install dataset-fashion-mnist" in note
    with pytest.raises(MissingDataError, match="apt-get install dataset-fashion-mnist"):
        from bnlab.lab.experiments.kit import load_data
        load_data(PRESETS["full"])
    # with the package (here: a fake system folder holding all four files) the same preset uses it
    system = tmp_path / "sys"
    write_tree(system, {f: b"" for f in FILES})
    monkeypatch.setattr(paths, "SYSTEM_DIRS", {"fashion-mnist": (system,)})
    assert used_dataset(quick) == "fashion-mnist" and "fell back" not in data_note(quick)
