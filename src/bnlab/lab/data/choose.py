"""Choosing a dataset that is there: the preferred one if its files are on disk, else a fallback.

Experiments prefer Fashion-MNIST at full scale (offline from Debian's package), and fall back
to the embedded MNIST digits where it is not installed, so that every preset runs on every
machine; the run then states which dataset it used.
"""
from __future__ import annotations

import os

from .local import find_folder
from .paths import resolve_data_dir
from .registry import dataset_info

__all__ = ["is_available", "choose_dataset"]


def is_available(name: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether ``load_dataset(name, ...)`` can run without a download (files present; the
    embedded set always is). The files' checksums are verified when they are loaded."""
    info = dataset_info(name)
    if not info.files:
        return True
    return find_folder(name, info.files, resolve_data_dir(data_dir)) is not None


def choose_dataset(preferred: str, fallback: str = "", data_dir: str | os.PathLike | None = None,
                   download: bool = False) -> str:
    """``preferred`` when it is available (or ``download`` is set), else ``fallback``.

    With an empty ``fallback`` the preferred name is returned unconditionally, so loading
    it raises the usual one-line "not found" error naming how to install it.
    """
    if download or not fallback or is_available(preferred, data_dir):
        return preferred
    dataset_info(fallback)  # ValueError on an unknown fallback name
    return fallback
