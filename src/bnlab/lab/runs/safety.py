"""Strings and paths that come out of run files are data, never markup or a way out.

:func:`escape_md` makes any string literal text in Markdown (a claim, a config value,
an error message, a file name cannot open a link, an image, a table cell or raw HTML).
:func:`confined` resolves a path recorded in a results file against its run folder and
refuses anything that would leave it (absolute paths, ``..``, symlinks pointing out).
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

__all__ = ["escape_md", "confined", "UnsafePathError"]

# Characters that open inline constructs anywhere (emphasis, code, links, images, raw
# HTML, entities, strikethrough, table cells); all are escapable in CommonMark.
_MD_INLINE = re.compile(r"([\\`*_{}\[\]<>|!~&])")
# What opens a block when it starts a line: headings, lists, quotes, setext, numbered items.
_MD_BLOCK_START = re.compile(r"^(\s*)([#+\-](?=\s|$)|-(?=-)|[=>]|\d+[.)](?=\s|$))")


class UnsafePathError(ValueError):
    """A recorded path points outside its run folder."""


def escape_md(value: object) -> str:
    """``str(value)`` as literal Markdown text on one line.

    Backslash-escapes the characters that open emphasis, code, links, images, raw HTML,
    entities and table cells (``\\`*_{}[]<>|!~&``) and a leading ``#``, ``-``, ``+``,
    ``=``, ``>`` or ``1.`` that would open a block; newlines become spaces so a value cannot
    start a new block. Words, numbers (``0.936``) and paths (``runs/fig1``) stay readable.
    """
    text = " ".join(str(value).splitlines())
    text = _MD_INLINE.sub(r"\\\1", text)
    return _MD_BLOCK_START.sub(_escape_block_start, text, count=1)


def _escape_block_start(m: re.Match) -> str:
    lead, mark = m.group(1), m.group(2)
    if mark[0].isdigit():  # "1." -> "1\." (digits themselves are not escapable)
        return lead + mark[:-1] + "\\" + mark[-1]
    return lead + "\\" + mark


def confined(run_dir: str | os.PathLike, rel: str | os.PathLike) -> Path:
    """``run_dir / rel`` resolved, if it stays inside ``run_dir``; else :class:`UnsafePathError`."""
    text = os.fspath(rel)
    if not text or "\0" in text:
        raise UnsafePathError(f"empty or invalid path {text!r} in a run file")
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() or PureWindowsPath(text).drive:
        raise UnsafePathError(f"absolute path {text!r} in a run file: only paths inside the run folder are used")
    if ".." in PurePosixPath(text.replace("\\", "/")).parts:
        raise UnsafePathError(f"path {text!r} in a run file leaves the run folder ('..')")
    root = Path(run_dir).resolve()
    target = (root / text).resolve()
    if target != root and root not in target.parents:
        raise UnsafePathError(f"path {text!r} in a run file resolves outside the run folder {root}")
    return target
