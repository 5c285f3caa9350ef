"""The lab's one atomic writer: a file is either its old self or the complete new one.

Every file the lab writes (config.json, results.json, checkpoints, figures, metrics
rewrites, downloads, caches) goes through :func:`atomic_open`:

1. write into a hidden temp file ``.NAME.XXXXXX.tmp`` in the *same* folder (so the
   rename below never crosses a file system);
2. flush and ``fsync`` it;
3. ``os.replace`` it over ``NAME`` (atomic on POSIX and Windows).

A run killed mid-write leaves the old file intact plus, at worst, an orphan ``.tmp`` that
:func:`clean_temp_files` removes at the next run. A full disk (``ENOSPC``/``EDQUOT``)
raises :class:`DiskFullError`, an ``OSError`` whose one-line message names the file and
the remedy, instead of a library's internal error (``unexpected pos ...``).
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = [
    "DiskFullError",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "clean_temp_files",
    "jsonable",
    "TEMP_SUFFIXES",
]

TEMP_SUFFIXES = (".tmp", ".part")  # ".part": names used by earlier versions of the lab
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(OSError):
    """No space left on the device (or quota exceeded) while writing a file."""

    def __init__(self, path: Path, cause: OSError) -> None:
        super().__init__(cause.errno, f"no space left on device writing {path}: "
                                      "free some space or write to another folder")
        self.filename = str(path)

    def __str__(self) -> str:  # one line, no "[Errno 28]" prefix
        return self.strerror


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield a file open for writing; on a clean exit it is fsync'ed and renamed onto ``path``.

    ``mode`` is ``"wb"`` (bytes) or ``"w"`` (UTF-8 text). If the block raises (also
    ``KeyboardInterrupt``) the temp file is deleted and ``path`` is untouched. The file
    gets the usual ``0o666 & ~umask`` permissions (``mkstemp`` would leave 0600).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.chmod(tmp, 0o666 & ~_umask())
            kwargs = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
            with os.fdopen(fd, mode, **kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            if exc.errno in _FULL and not isinstance(exc, DiskFullError):
                raise DiskFullError(path, exc) from None
            raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``Path(path)``."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(obj: Any) -> Any:
    """Make ``obj`` strict JSON: non-finite floats become ``None``, tuples lists, tensors numbers."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as strict, indented JSON (see :func:`jsonable`) atomically."""
    text = json.dumps(jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text)


def clean_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove orphan temp files (``.NAME.*.tmp`` / ``.part``) under ``folder``; return them.

    Call it only while no other process writes into ``folder`` (the CLI holds the run
    folder's lock, :mod:`bnlab.lab.runs.lock`), since a live writer's temp file looks the same.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    for p in root.rglob(".*"):
        if p.suffix in TEMP_SUFFIXES and p.is_file() and not p.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return sorted(removed)
