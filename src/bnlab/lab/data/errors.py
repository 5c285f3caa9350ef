"""Exceptions raised by :mod:`bnlab.lab.data`; every message says what to do next."""
from __future__ import annotations


class DataError(RuntimeError):
    """Base class: a dataset could not be provided."""


class MissingDataError(DataError, FileNotFoundError):
    """Files a dataset needs are not on disk and downloading was not requested (or failed)."""


class ChecksumError(DataError):
    """A downloaded (or found) file does not match the checksum published for it."""


class FormatError(DataError, ValueError):
    """A file is truncated, corrupt, or not in the expected format (IDX, CIFAR pickle, cache)."""
