"""Where the lab keeps data: ``data_dir`` argument > env ``BNLAB_DATA`` > user cache dir;
then read-only system copies (:data:`SYSTEM_DIRS`)."""
from __future__ import annotations

import os
from pathlib import Path


def default_data_dir() -> Path:
    """The default data/cache directory (not created here).

    ``$BNLAB_DATA`` when set and non-empty; else ``$XDG_CACHE_HOME/bnlab`` when
    ``XDG_CACHE_HOME`` is set to an absolute path (XDG Base Directory rule); else
    ``~/.cache/bnlab``.
    """
    env = os.environ.get("BNLAB_DATA", "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "bnlab"
    return Path.home() / ".cache" / "bnlab"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` as a :class:`Path` (``~`` expanded), or :func:`default_data_dir` when None."""
    if data_dir is None:
        return default_data_dir()
    return Path(data_dir).expanduser()


# Read-only, system-wide copies installed by a package manager, searched after the data
# directory and before any download. Debian/Ubuntu: ``apt-get install dataset-fashion-mnist``.
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}
SYSTEM_PACKAGES: dict[str, str] = {"fashion-mnist": "dataset-fashion-mnist"}


def system_dirs(name: str) -> tuple[Path, ...]:
    """System folders that may hold dataset ``name``'s official files (may not exist)."""
    return SYSTEM_DIRS.get(name, ())
