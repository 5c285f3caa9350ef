"""Files of a run folder: ``config.json``, ``results.json``, ``metrics.jsonl``, text.

Writes go through the lab's one atomic writer (:mod:`bnlab.lab.runs.atomic`). Reads
never trust the file: :func:`read_json` turns an empty, truncated, non-UTF-8 or
non-object file into one :class:`RunFileError` line naming the file and the remedy, and
:func:`read_jsonl` keeps only the well-formed object records of a JSON-lines log.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable

from .atomic import atomic_open, atomic_write_json, atomic_write_text, jsonable

__all__ = ["atomic_write", "write_json", "read_json", "read_jsonl", "write_text", "run_metadata",
           "jsonable", "RunFileError"]


class RunFileError(ValueError):
    """A run-folder file is missing, malformed or not the kind of file expected."""


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> Path:
    """Call ``write(fileobj)`` on a temp file beside ``path``, then rename it into place."""
    with atomic_open(path, "wb" if "b" in mode else "w") as f:
        write(f)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_json(path, obj)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_text(path, text)


def read_json(path: str | os.PathLike, *, kind: str = "object") -> Any:
    """The JSON object in ``path``; :class:`RunFileError` (one line) if it is not one.

    ``kind="object"`` requires a JSON object (``{...}``), ``kind="any"`` accepts any value.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise RunFileError(f"{p} does not exist") from None
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RunFileError(f"{p} is not UTF-8 text (corrupt?): delete it or rerun with --force") from None
    except json.JSONDecodeError as exc:
        what = "is empty" if not raw.strip() else f"is not valid JSON ({exc.msg}, line {exc.lineno})"
        raise RunFileError(f"{p} {what}: delete it or rerun with --force") from None
    if kind == "object" and not isinstance(value, dict):
        raise RunFileError(f"{p} holds {type(value).__name__}, not a JSON object: "
                           "delete it or rerun with --force")
    return value


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The object records of a JSON-lines file, in order.

    Lines that are empty, torn by a kill, not JSON, or JSON but not an object (``null``,
    numbers, lists) are skipped; bytes that are not UTF-8 are replaced, so one damaged
    line costs that line only. A missing file has no records.
    """
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def run_metadata() -> dict[str, Any]:
    """Versions and machine facts written beside every resolved config."""
    import torch

    from .identity import code_version

    return {
        "bnlab": code_version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "argv": sys.argv,
    }
