"""A command's hold on its run folder: check ``--out``, lock it, tidy it, never leave junk.

``with RunSession(out, flag="--out") as session:`` is how a ``bnlab`` command writes a
run folder:

- ``--out`` is checked first (:func:`check_out_dir`): a path that is a file, or a folder
  that cannot be created or written, is one :class:`~bnlab.lab.config.ConfigError` line
  naming the flag, the path and the remedy, before any work starts;
- the folder is locked (:class:`~bnlab.lab.runs.lock.RunLock`): one writer at a time;
- orphan temp files of killed runs are removed (:func:`~bnlab.lab.runs.atomic.clean_temp_files`);
- when the command fails, a folder it created is removed again unless it holds
  checkpoints to ``--resume`` from (:func:`discard_failed`), so a failed run never
  leaves a folder with only ``config.json`` in it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from ..config import ConfigError
from .atomic import clean_temp_files
from .lock import RunLock

__all__ = ["RunSession", "check_out_dir", "discard_failed", "remove_stale_results"]


def check_out_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create ``path`` (and parents) if needed; a one-line ``ConfigError`` if it cannot be a run folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder: choose a folder for the run's files")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{flag} {path}: cannot create this folder ({reason}): "
                          "choose a writable location") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: folder is not writable: choose a writable location")
    return path


def _has_checkpoints(folder: Path) -> bool:
    return any(p.suffix == ".pt" for p in folder.rglob("*.pt"))


def discard_failed(folder: str | os.PathLike, created: bool) -> bool:
    """After a failure: remove ``folder`` if this run created it and it has no checkpoints."""
    folder = Path(folder)
    if not created or not folder.is_dir() or _has_checkpoints(folder):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


def remove_stale_results(folder: str | os.PathLike) -> None:
    """A fresh run starts by deleting what an earlier run left that would pass for its own:
    ``results.json`` and the TensorBoard events in ``tb/`` (``metrics.jsonl`` is truncated by
    the trainer, checkpoints are overwritten)."""
    folder = Path(folder)
    with contextlib.suppress(FileNotFoundError):
        (folder / "results.json").unlink()
    if (folder / "tb").is_dir() and not (folder / "tb").is_symlink():
        shutil.rmtree(folder / "tb", ignore_errors=True)


class RunSession:
    """Check, lock and tidy a run folder for one command (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike, flag: str = "--out", lock: bool = True) -> None:
        self.folder = Path(folder)
        self.flag = flag
        self.created = not self.folder.exists()
        self.lock = RunLock(self.folder, flag) if lock else None
        self.cleaned: list[Path] = []
        self.discarded = False

    def __enter__(self) -> "RunSession":
        created_root = self._first_missing()
        check_out_dir(self.folder, self.flag)
        self._created_root = created_root
        if self.lock is not None:
            try:
                self.lock.acquire()
            except BaseException:
                self._discard()
                raise
            self.cleaned = clean_temp_files(self.folder)
        return self

    def _first_missing(self) -> Path | None:
        """The top-most folder of ``self.folder``'s path that does not exist yet."""
        missing = None
        for p in [self.folder, *self.folder.parents]:
            if p.exists():
                break
            missing = p
        return missing

    def _discard(self) -> None:
        root = self._created_root
        if self.lock is None:  # not the writer (a non-zero torchrun rank): rank 0 tidies up
            return
        if root is not None and discard_failed(root, created=True):
            self.discarded = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.lock is not None:
            self.lock.release()
        if exc_type is not None:
            self._discard()


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
