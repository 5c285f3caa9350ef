"""Training checkpoints: atomic, hashed, loaded without running pickled code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only (model and
optimizer ``state_dict``, step, RNG state, evaluation history), so it loads with
``torch.load(..., weights_only=True)``. :func:`save_checkpoint` serializes it in memory,
writes it atomically (:mod:`bnlab.lab.runs.atomic`) and writes its SHA-256 beside it in
``NAME.sha256`` (``sha256sum`` format). :func:`load_checkpoint` refuses, in one line, a
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
    """Write ``state`` to ``path`` atomically, then its SHA-256 to ``path.sha256``."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)  # in memory first: a full disk fails in our writer, not mid-zip
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_text(hash_path(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    return path


def _expected_hash(path: Path) -> str:
    side = hash_path(path)
    try:
        text = side.read_text(encoding="utf-8", errors="replace").split()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} has no {side.name} (cannot verify it): {_REMEDY}") from None
    if not text or len(text[0]) != 64 or any(c not in "0123456789abcdef" for c in text[0]):
        raise CheckpointError(f"{side} is not a SHA-256 line: {_REMEDY}")
    return text[0]


def load_checkpoint(path: str | os.PathLike, require: Iterable[str] = ()) -> dict[str, Any]:
    """The verified checkpoint at ``path`` (on CPU); ``require``: keys it must have."""
    path = Path(path)
    expected = _expected_hash(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    if hashlib.sha256(data).hexdigest() != expected:
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
