"""What a run *is*: its kind, name, preset, whole resolved config and code version.

A run folder's results may stand in for a new run only when they were produced by the
same thing: :func:`run_identity` hashes the experiment (or ``train``), the preset, every
field of the resolved config, the torch version and :func:`code_version` — bnlab's
version plus a SHA-256 of the package's source files, so an edited checkout (or an
upgraded install) never reuses numbers computed by other code.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from .atomic import jsonable

__all__ = ["code_version", "source_digest", "digest_sources", "run_identity", "identity_matches", "RUNTIME_ONLY"]

_SOURCE_SUFFIXES = (".py", ".cpp", ".h", ".hpp", ".c")
# Settings that change how fast a run goes, not what it computes: not part of its identity.
RUNTIME_ONLY = ("threads",)


def digest_sources(root: str | Path) -> str:
    """SHA-256 (hex) over the relative path and bytes of every source file under ``root``."""
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.suffix in _SOURCE_SUFFIXES and p.is_file() and "__pycache__" not in p.parts:
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def source_digest() -> str:
    """:func:`digest_sources` of the installed ``bnlab`` package (computed once per process)."""
    import bnlab

    return digest_sources(Path(bnlab.__file__).resolve().parent)


def code_version() -> str:
    """``"<bnlab version>+<first 12 hex digits of source_digest()>"``, e.g. ``0.1.0+3f2a...``."""
    import bnlab

    return f"{bnlab.__version__}+{source_digest()[:12]}"


def run_identity(kind: str, name: str, preset: str | None, config: Mapping[str, Any]) -> dict[str, str]:
    """``{"code": code_version(), "digest": sha256 of everything that defines the run}``.

    Every config field counts except :data:`RUNTIME_ONLY` ones (``threads``).
    """
    import torch

    code = code_version()
    settings = {k: v for k, v in dict(config).items() if k not in RUNTIME_ONLY}
    body = {"kind": kind, "name": name, "preset": preset, "config": jsonable(settings),
            "code": code, "torch": torch.__version__}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return {"code": code, "digest": digest}


def identity_matches(saved: Any, identity: Mapping[str, str]) -> bool:
    """Does a saved ``identity`` entry (from a JSON file: anything) equal ``identity``?"""
    return isinstance(saved, dict) and saved.get("digest") == identity["digest"]
