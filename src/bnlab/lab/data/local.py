"""Finding a dataset's files on disk, in a fixed order, and verifying them before use.

Search order for the files of one split:

1. ``<data_dir>/<dataset>/`` (``data_dir`` argument / ``--data-dir``, else env
   ``BNLAB_DATA``, else the user cache dir), when it holds all of them;
2. read-only system copies (:data:`bnlab.lab.data.paths.SYSTEM_DIRS`; Fashion-MNIST:
   ``/usr/share/datasets/fashion-mnist/`` from Debian's ``dataset-fashion-mnist``);
3. a download into ``<data_dir>/<dataset>/``, only when asked for (``download=True``).

A file is accepted when its own SHA-256 is the official one, or, for ``.gz`` files with a
recorded ``raw_sha256``, when its decompressed bytes are the official content (a copy
recompressed by a distribution). Anything else raises :class:`ChecksumError`.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

from .errors import ChecksumError, FormatError, MissingDataError
from .idx import gunzip
from .paths import SYSTEM_PACKAGES, system_dirs
from .sources import FileSpec


def find_folder(name: str, files: Sequence[str], data_dir: Path) -> Path | None:
    """The first folder in the search order that holds every one of ``files``, else None."""
    for folder in (data_dir / name, *system_dirs(name)):
        if all((folder / f).is_file() for f in files):
            return folder
    return None


def read_verified(path: Path, spec: FileSpec) -> bytes:
    """The decompressed content of ``path`` once it is shown to be the official file.

    Raises :class:`ChecksumError` naming what was found and what was expected.
    """
    raw = path.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    official = spec.sha256 is not None and sha == spec.sha256 \
        and (spec.size is None or len(raw) == spec.size)
    try:
        data = gunzip(raw, str(path))
    except FormatError:
        if official:
            raise
        data = None
    if official:
        return data
    expected = [f"SHA-256 {spec.sha256} (the official {spec.name})"]
    if spec.raw_sha256 is not None and data is not None:
        if hashlib.sha256(data).hexdigest() == spec.raw_sha256 \
                and (spec.raw_size is None or len(data) == spec.raw_size):
            return data
        expected.append(f"decompressed SHA-256 {spec.raw_sha256}")
    raise ChecksumError(f"{path} is not the official {spec.name}: SHA-256 {sha}, expected "
                        + " or ".join(expected))


def missing_message(name: str, files: Sequence[str], data_dir: Path) -> str:
    """One line: which files are missing where, and the commands that provide them."""
    folder = data_dir / name
    places = ", ".join(f"{d}{os.sep}" for d in (folder, *system_dirs(name)))
    fetch = f"download it with `bnlab data fetch {name} --data-dir {data_dir}` (in a run: --download)"
    package = SYSTEM_PACKAGES.get(name)
    if package:
        how = f"install it with `apt-get install {package}` (offline, Debian/Ubuntu) or {fetch}"
    else:
        how = f"{fetch}, or put the official files in {folder}{os.sep}"
    return f"dataset {name!r} not found (no {', '.join(files)} in {places}): {how}"


def raise_missing(name: str, files: Sequence[str], data_dir: Path) -> None:
    raise MissingDataError(missing_message(name, files, data_dir))
