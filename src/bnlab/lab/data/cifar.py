"""Reader for the official CIFAR-10 python archive ``cifar-10-python.tar.gz``, read safely.

The archive holds ``cifar-10-batches-py/data_batch_1`` ... ``data_batch_5`` (train,
10,000 images each) and ``test_batch``: Python 2 pickles of a dict with ``b"data"``
(uint8 array (10000, 3072): 1024 red, then 1024 green, then 1024 blue values, each a
32×32 image in row-major order) and ``b"labels"`` (list of 10,000 ints in 0..9).

Safety: members are read straight out of the tar (nothing is extracted to disk), and the
archive is rejected if any member has an absolute path, a ``..`` component, or is a link
or device. The pickles are decoded by :class:`RestrictedUnpickler`, which resolves only
the few globals a NumPy array needs (``ndarray``, ``dtype``, ``_reconstruct``,
``_codecs.encode``) and refuses everything else, so a crafted pickle cannot run code; the
decoded objects are then type-checked.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from .errors import FormatError

PREFIX = "cifar-10-batches-py"
TRAIN_MEMBERS = tuple(f"{PREFIX}/data_batch_{i}" for i in range(1, 6))
TEST_MEMBERS = (f"{PREFIX}/test_batch",)
_IMAGE_BYTES = 3 * 32 * 32


def _reconstruct():
    """NumPy's array-unpickling helper (``numpy._core`` in NumPy 2, ``numpy.core`` before)."""
    try:
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:  # NumPy < 2
        from numpy.core.multiarray import _reconstruct as fn
    return fn


def _allowed() -> dict[tuple[str, str], object]:
    import codecs

    rec = _reconstruct()
    return {
        ("numpy.core.multiarray", "_reconstruct"): rec,
        ("numpy._core.multiarray", "_reconstruct"): rec,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3 pickles bytes at protocol 2
    }


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals listed in :func:`_allowed`."""

    def find_class(self, module: str, name: str):
        obj = _allowed().get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return obj


def safe_loads(data: bytes):
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (``encoding="bytes"`` for Python 2)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def check_member(member: tarfile.TarInfo) -> None:
    """Reject tar members that could escape a directory or are not plain files/directories."""
    path = PurePosixPath(member.name)
    if member.name.startswith(("/", "\\")) or path.is_absolute() or ".." in path.parts \
            or "\\" in member.name or (path.parts and ":" in path.parts[0]):
        raise FormatError(f"unsafe path in archive: {member.name!r}; refusing to read it")
    if not (member.isfile() or member.isdir()):
        raise FormatError(f"archive member {member.name!r} is a link or special file; refusing")


def parse_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch pickle as ``(uint8 (n, 3, 32, 32), int64 (n,))``, type-checked."""
    try:
        batch = safe_loads(data)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as err:
        raise FormatError(f"{name}: not a valid CIFAR batch pickle ({err})") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise FormatError(f"{name}: expected a dict with b'data' and b'labels'")
    images, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 \
            or images.shape[1] != _IMAGE_BYTES:
        raise FormatError(f"{name}: b'data' must be a uint8 array of shape (n, {_IMAGE_BYTES})")
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise FormatError(f"{name}: b'labels' must be a list of ints")
    y = np.asarray(labels, dtype=np.int64)
    if y.shape[0] != images.shape[0]:
        raise FormatError(f"{name}: {images.shape[0]} images but {y.shape[0]} labels")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise FormatError(f"{name}: labels must be in 0..9")
    return images.reshape(-1, 3, 32, 32), y  # (n, 3072) -> (n, C=3, H=32, W=32)


def read_cifar10(archive: str | os.PathLike, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N, 3, 32, 32) and labels int64 (N,) of ``split`` from the tar.gz."""
    wanted = TRAIN_MEMBERS if split == "train" else TEST_MEMBERS
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    archive = Path(archive)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                check_member(member)
                if member.name in wanted:
                    fh = tar.extractfile(member)
                    found[member.name] = parse_batch(fh.read(), f"{archive}:{member.name}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise FormatError(f"{archive}: corrupt or truncated archive ({err}); delete it and "
                          "download it again") from err
    missing = [m for m in wanted if m not in found]
    if missing:
        raise FormatError(f"{archive}: not the CIFAR-10 python archive, missing {missing}")
    xs, ys = zip(*(found[m] for m in wanted))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))
