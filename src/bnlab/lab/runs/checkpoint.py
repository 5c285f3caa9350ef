"""Training checkpoints: atomic, hashed, loaded without running pickled code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only (model and
optimizer ``state_dict``, step, RNG state, evaluation history), so it loads with
``torch.load(..., weights_only=True)``. :func:`save_checkpoint` serializes it in memory,
writes it atomically (:mod:`bnlab.lab.runs.atomic`) with its SHA-256 beside it in
``NAME.sha256`` (``sha256sum`` format), in an order that a kill cannot break. :func:`load_checkpoint` refuses, in one line, a
file whose bytes do not match that hash (one flipped bit is enough), a checkpoint
without its hash, and anything that is not a checkpoint (empty, text, ``{}``, truncated).
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any, Iterable

import torch

from .atomic import atomic_write_bytes, atomic_write_text
from .runfiles import RunFileError

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "hash_path"]

_REMEDY = "delete it (and its .sha256) to start over, or rerun without --resume"


class CheckpointError(RunFileError):
    """A checkpoint is missing its hash, does not match it, or is not a checkpoint."""


def hash_path(path: str | os.PathLike) -> Path:
    """Where the SHA-256 of checkpoint ``path`` is kept: ``path`` + ``.sha256``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically, with its SHA-256 in ``path.sha256``.

    The pair is replaced in three atomic steps so that a kill at any moment leaves a
    checkpoint that verifies: (1) the hash file lists the new hash *and* the current
    file's; (2) the checkpoint is replaced; (3) the hash file keeps the new hash only.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)  # in memory first: a full disk fails in our writer, not mid-zip
    data = buf.getvalue()
    new = hashlib.sha256(data).hexdigest()
    side = hash_path(path)
    current = [h for h in _listed_hashes(side) if h != new][:1] if path.exists() else []
    atomic_write_text(side, "".join(f"{h}  {path.name}\n" for h in [new, *current]))
    atomic_write_bytes(path, data)
    if current:
        atomic_write_text(side, f"{new}  {path.name}\n")
    return path


def _listed_hashes(side: Path) -> list[str]:
    """The SHA-256 values (first word of each line) in a hash file; [] if missing or none valid."""
    try:
        lines = side.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    words = (line.split()[0] for line in lines if line.split())
    return [w for w in words if len(w) == 64 and all(c in "0123456789abcdef" for c in w)]


def load_checkpoint(path: str | os.PathLike, require: Iterable[str] = ()) -> dict[str, Any]:
    """The verified checkpoint at ``path`` (on CPU); ``require``: keys it must have."""
    path = Path(path)
    side = hash_path(path)
    expected = _listed_hashes(side)
    if not expected:
        what = "has no" if not side.exists() else "has no valid SHA-256 line in"
        raise CheckpointError(f"checkpoint {path} {what} {side.name} (cannot verify it): {_REMEDY}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    if hashlib.sha256(data).hexdigest() not in expected:
        raise CheckpointError(f"checkpoint {path} does not match its SHA-256 in {hash_path(path).name} "
                              f"(corrupt or modified): {_REMEDY}")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason}): {_REMEDY}") from None
    missing = [k for k in require if not isinstance(state, dict) or k not in state]
    if not isinstance(state, dict) or missing:
        what = f"lacks {missing}" if isinstance(state, dict) else f"holds {type(state).__name__}"
        raise CheckpointError(f"{path} is not a bnlab training checkpoint (it {what}): {_REMEDY}")
    return state
