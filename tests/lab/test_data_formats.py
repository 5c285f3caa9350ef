"""The IDX and CIFAR-10 readers against files encoded from the format specifications."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from bnlab.lab.data import FormatError
from bnlab.lab.data.cifar import parse_batch, read_cifar10, safe_loads
from bnlab.lab.data.idx import parse_idx, read_idx, read_idx_pair

from data_fixtures import cifar_batch_pickle, cifar_like, encode_idx, tar_gz


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 0, 3)])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, dtype, shape, compress):
    rng = np.random.default_rng(1)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    data = encode_idx(array)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    path.write_bytes(gzip.compress(data) if compress else data)
    out = read_idx(path, ndim=len(shape))
    assert out.dtype == np.dtype(dtype).newbyteorder("=") and out.shape == shape
    np.testing.assert_array_equal(out, array)


def test_idx_known_bytes():
    # Oracle written by hand: magic 0x00000801, one dim of 3, then bytes 7, 8, 9.
    raw = bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9])
    np.testing.assert_array_equal(parse_idx(raw, ndim=1), [7, 8, 9])


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"\x00", "trailing bytes"),
    (lambda b: b"\x00\x00\x07" + b[3:], "magic"),   # unknown element type
    (lambda b: b"\x01" + b[1:], "magic"),            # non-zero leading bytes
    (lambda b: b[:2], "too short"),
    (lambda b: b[:9], "truncated IDX header"),
])
def test_idx_bad_files(mutate, message):
    good = encode_idx(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    with pytest.raises(FormatError, match=message):
        parse_idx(mutate(good), name="x")


def test_idx_wrong_ndim_and_broken_gzip(tmp_path):
    labels = encode_idx(np.arange(5, dtype=np.uint8))
    with pytest.raises(FormatError, match="1 dimensions, expected 3"):
        parse_idx(labels, ndim=3)
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(labels)[:-6])  # cut inside the gzip trailer / stream
    with pytest.raises(FormatError, match="gzip"):
        read_idx(path)


def test_idx_pair_checks(tmp_path):
    images = np.zeros((3, 28, 28), np.uint8)
    (tmp_path / "i").write_bytes(encode_idx(images))
    (tmp_path / "l").write_bytes(encode_idx(np.array([1, 2], np.uint8)))
    with pytest.raises(FormatError, match="3 images but"):
        read_idx_pair(tmp_path / "i", tmp_path / "l")
    (tmp_path / "l").write_bytes(encode_idx(np.array([1, 2, 10], np.uint8)))
    with pytest.raises(FormatError, match="label 10"):
        read_idx_pair(tmp_path / "i", tmp_path / "l")
    (tmp_path / "l").write_bytes(encode_idx(np.array([1, 2, 9], np.uint8)))
    x, y = read_idx_pair(tmp_path / "i", tmp_path / "l")
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [1, 2, 9]


def test_cifar_round_trip_and_pixel_layout(tmp_path):
    arrays, files = cifar_like(per_batch=3)
    path = tmp_path / "c.tar.gz"
    path.write_bytes(files["cifar-10-python.tar.gz"])
    for split, n in (("train", 15), ("test", 3)):
        x, y = read_cifar10(path, split)
        data, labels = arrays[split]
        assert x.shape == (n, 3, 32, 32) and y.tolist() == labels.tolist()
        # Official layout: row = 1024 red, 1024 green, 1024 blue; each 32x32 row-major.
        for c, h, w in [(0, 0, 0), (1, 5, 7), (2, 31, 31), (2, 0, 31)]:
            assert x[:, c, h, w].tolist() == data[:, c * 1024 + h * 32 + w].tolist()


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "cifar-10-batches-py/../../evil",
                                  "C:evil", "a\\..\\evil"])
def test_cifar_rejects_path_traversal(tmp_path, name):
    arrays, files = cifar_like(per_batch=1)
    good = tarfile.open(fileobj=io.BytesIO(files["cifar-10-python.tar.gz"]), mode="r:gz")
    members = {m.name: good.extractfile(m).read() for m in good.getmembers()}
    members[name] = b"pwned"
    path = tmp_path / "sub" / "c.tar.gz"
    path.parent.mkdir()
    path.write_bytes(tar_gz(members))
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(FormatError, match="unsafe path"):
        read_cifar10(path, "train")
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(path.parent) == ["c.tar.gz"]


def test_cifar_rejects_links(tmp_path):
    link = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    path = tmp_path / "c.tar.gz"
    path.write_bytes(tar_gz({}, extra=[link]))
    with pytest.raises(FormatError, match="link or special"):
        read_cifar10(path, "train")


def test_cifar_missing_members_and_corrupt_archive(tmp_path):
    path = tmp_path / "c.tar.gz"
    path.write_bytes(tar_gz({"cifar-10-batches-py/test_batch":
                             cifar_batch_pickle(np.zeros((1, 3072), np.uint8), [0])}))
    with pytest.raises(FormatError, match="missing"):
        read_cifar10(path, "train")
    assert read_cifar10(path, "test")[1].tolist() == [0]
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(FormatError, match="corrupt or truncated"):
        read_cifar10(path, "test")


class _Payload:
    """Unpickling this would create a file; the restricted unpickler must refuse."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "marker"
    evil = pickle.dumps({b"data": _Payload(str(marker)), b"labels": []}, protocol=2)
    with pytest.raises(FormatError, match="not allowed"):
        parse_batch(evil, "evil")
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        safe_loads(pickle.dumps(os.system, protocol=2))


@pytest.mark.parametrize("batch, message", [
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
    ({b"data": np.zeros((2, 3071), np.uint8), b"labels": [0, 1]}, "uint8"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, "0..9"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": ["a"]}, "list of ints"),
    ({b"labels": [0]}, "b'data'"),
    ([1, 2], "b'data'"),
])
def test_cifar_batch_validation(batch, message):
    with pytest.raises(FormatError, match=message):
        parse_batch(pickle.dumps(batch, protocol=2), "b")


def test_cifar_object_arrays_refused():
    # An object array would smuggle arbitrary (already restricted) objects; it must fail.
    batch = {b"data": np.array([[1] * 3072], dtype=object), b"labels": [0]}
    with pytest.raises(FormatError):
        parse_batch(pickle.dumps(batch, protocol=2), "b")
