"""One writer per run folder: an exclusive lock on ``--out``.

:class:`RunLock` holds ``FOLDER/.bnlab.lock``: an ``flock`` (released by the kernel when
the process dies, however it dies) on a file that records the holder's pid, host and
command. A second ``bnlab`` writing into the same folder — or into a folder inside a
folder another process has locked — is refused with a one-line :class:`RunLockedError` naming the pid. A lock
file left by a killed process is *stale*: nobody holds its ``flock`` and its pid is not
running; it is taken over and reported in :attr:`RunLock.stale_pid`.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

__all__ = ["RunLock", "RunLockedError", "LOCK_NAME", "pid_alive"]

LOCK_NAME = ".bnlab.lock"


class RunLockedError(RuntimeError):
    """Another live process is writing into this run folder."""


def pid_alive(pid: int) -> bool:
    """Is process ``pid`` running (on this host)?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8", errors="replace") or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _held_by_other(path: Path, ours: set[int]) -> dict[str, Any] | None:
    """The holder of ``path``'s lock if a live process other than ``ours`` holds it, else ``None``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        holder = _read_holder(path) or {"pid": "?"}
        return None if holder.get("pid") in ours else holder  # our own (or our parent's) outer lock
    finally:
        os.close(fd)  # closing drops the probe's shared lock
    return None


class RunLock:
    """``with RunLock(folder): ...`` — exclusive writer of ``folder`` (created if missing)."""

    def __init__(self, folder: str | os.PathLike, flag: str = "--out", parent_pid: int | None = None) -> None:
        self.folder = Path(folder)
        self.flag = flag
        self.ours = {os.getpid()} | ({parent_pid} if parent_pid else set())  # a worker of `reproduce --jobs`
        self.path = self.folder / LOCK_NAME
        self.stale_pid: int | None = None
        self._fd: int | None = None

    def _refuse(self, where: Path, holder: dict[str, Any]) -> None:
        who = f"pid {holder.get('pid', '?')}"
        if holder.get("host") and holder.get("host") != socket.gethostname():
            who += f" on {holder['host']}"
        raise RunLockedError(f"{self.flag} {self.folder}: {where} is being written by another bnlab "
                             f"({who}); wait for it to finish or choose another {self.flag}")

    def acquire(self) -> "RunLock":
        for parent in self.folder.resolve().parents:  # a run inside a folder another run writes
            holder = _held_by_other(parent / LOCK_NAME, self.ours)
            if holder is not None:
                self._refuse(parent, holder)
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = self._lock_file()
        previous = _read_holder(self.path).get("pid")
        if isinstance(previous, int) and previous != os.getpid() and not pid_alive(previous):
            self.stale_pid = previous  # a killed run's lock: nobody held it
        info = {"pid": os.getpid(), "host": socket.gethostname(), "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def _lock_file(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    self._refuse(self.folder, _read_holder(self.path) or {"pid": "?"})
                raise
            try:  # the holder may have unlinked the file between our open and flock: retry
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # unlink while still holding: no window for a stale file
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
