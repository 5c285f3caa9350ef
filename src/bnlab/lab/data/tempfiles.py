"""Temporary files of killed writers: found and removed at the next run, never under a live one.

Every file the data package writes (a download, the embedded cache) is first written to a
hidden temporary file beside its target, ``.<target>.<random>.tmp`` (or ``.part``), and renamed
into place when complete. A process killed mid-write (SIGKILL, power loss) leaves that
temporary file behind. The next load of the same folder removes such orphans.

Safety against a concurrent writer: writers hold a *shared* ``flock`` on the folder while
they write (:func:`writing`); the cleaner takes an *exclusive* lock without waiting, so it
removes files only when no writer is active, and skips cleaning otherwise. A killed
process's locks vanish with it. Where ``fcntl`` is unavailable (Windows) an orphan is a
temporary file untouched for :data:`STALE_AFTER_S` seconds.
"""
from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from typing import Iterable, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

STALE_AFTER_S = 3600.0
_SUFFIXES = (".tmp", ".part")


def is_orphan_name(filename: str, target: str) -> bool:
    """Whether ``filename`` is a temporary file of ``target`` (``.<target>.<random>.tmp|.part``)."""
    pattern = rf"\.{re.escape(target)}\.[A-Za-z0-9_-]+(\.tmp|\.part)"
    return re.fullmatch(pattern, filename) is not None


def _open_dir(folder: Path) -> int | None:
    if fcntl is None:
        return None
    try:
        return os.open(folder, os.O_RDONLY)
    except OSError:
        return None


def _remove(folder: Path, targets: Iterable[str], min_age: float) -> list[str]:
    removed = []
    targets = list(targets)
    now = time.time()
    for entry in os.scandir(folder):
        if not entry.name.endswith(_SUFFIXES) or not entry.is_file(follow_symlinks=False):
            continue
        if not any(is_orphan_name(entry.name, t) for t in targets):
            continue
        try:
            if min_age and now - entry.stat(follow_symlinks=False).st_mtime < min_age:
                continue
            os.unlink(entry.path)
            removed.append(entry.name)
        except OSError:  # read-only folder, raced with another cleaner: leave it
            pass
    return removed


def clean_orphans(folder: str | os.PathLike, targets: Iterable[str]) -> list[str]:
    """Remove temporary files of ``targets`` left in ``folder`` by killed writers.

    Returns the names removed. Does nothing when the folder does not exist, when another
    process is writing into it (it holds the lock), or where files cannot be removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    fd = _open_dir(folder)
    if fd is None:
        return _remove(folder, targets, STALE_AFTER_S)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a writer is active: its temp files are not orphans
            return []
        return _remove(folder, targets, 0.0)
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def writing(folder: str | os.PathLike) -> Iterator[Path]:
    """Create ``folder`` and hold a shared lock on it while the block writes into it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = _open_dir(folder)
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield folder
    finally:
        if fd is not None:
            os.close(fd)
