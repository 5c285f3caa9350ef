"""Fetch official dataset files over HTTPS into the cache, verified and written atomically.

A file is streamed into a hidden temporary file in the destination directory while its
SHA-256 and MD5 are computed; only when size and checksums match the published values
(:mod:`bnlab.lab.data.sources`) is it moved into place with ``os.replace``. On any failure
(network error, wrong size, checksum mismatch, Ctrl-C) the temporary file is removed, so the
cache never holds a partial or unverified file.

Base URLs are tried in order: the ``base_url`` argument (the file name is appended), else
env ``BNLAB_DATA_URL`` (``<BNLAB_DATA_URL>/<dataset>/<file>``, for a local mirror of all
datasets), else the dataset's official mirrors. URLs must be ``https://``; plain ``http://``
is accepted only for loopback hosts (127.0.0.1, ::1, localhost), which the tests use. The
same rule applies to every redirect: a mirror that redirects to ``http://`` elsewhere (or to
``file:``, ``ftp:``) is refused before anything is fetched from the new address.

Time limits: ``timeout`` bounds each network operation (connecting, each read); ``deadline``
bounds the whole download of one file, over all mirrors, so a server that trickles a byte
now and then cannot hold a run forever. The default deadline is
:func:`default_deadline` (env ``BNLAB_DOWNLOAD_DEADLINE`` in seconds overrides it).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Sequence

from ..runs.atomic import atomic_open
from .errors import ChecksumError, DataError
from .sources import FileSpec, Source
from .tempfiles import writing

_CHUNK = 1 << 20
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_MIN_RATE = 32 * 1024  # bytes/s the default deadline allows for, plus a fixed margin
_DEADLINE_MARGIN_S = 300.0


class InsecureURLError(DataError):
    """A URL (given, or reached by a redirect) that is neither https:// nor loopback http://."""


class DeadlineError(DataError):
    """A download did not finish within its overall deadline."""


def file_digests(path: str | os.PathLike, md5: bool = True) -> tuple[int, str, str | None]:
    """``(size, sha256 hex, md5 hex or None)`` of a file, read in 1 MiB chunks."""
    sha, size = hashlib.sha256(), 0
    m = hashlib.md5(usedforsecurity=False) if md5 else None
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            sha.update(chunk)
            if m is not None:
                m.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest(), (m.hexdigest() if m is not None else None)


def check_digests(spec: FileSpec, size: int, sha256: str, md5: str | None, where: str) -> None:
    """Raise :class:`ChecksumError` unless size, SHA-256 and MD5 match ``spec``.

    A digest that is None on either side is skipped (downloads compute both; files
    already on disk are checked by SHA-256 alone when it is known, else by MD5).
    """
    problems = []
    if spec.size is not None and size != spec.size:
        problems.append(f"size {size} bytes, expected {spec.size}")
    if spec.sha256 is not None and sha256 != spec.sha256:
        problems.append(f"SHA-256 {sha256}, expected {spec.sha256}")
    if spec.md5 is not None and md5 is not None and md5 != spec.md5:
        problems.append(f"MD5 {md5}, expected {spec.md5}")
    if problems:
        raise ChecksumError(f"{spec.name} from {where} does not match the published checksums: "
                            + "; ".join(problems))


def verify_file(path: str | os.PathLike, spec: FileSpec) -> None:
    """Check a file on disk: size and SHA-256 (MD5 only when no SHA-256 is recorded)."""
    check_digests(spec, *file_digests(path, md5=spec.sha256 is None), where=str(path))


def candidate_urls(source: Source, name: str,
                   base_url: str | Sequence[str] | None = None) -> list[str]:
    """URLs to try for file ``name``, in order (see the module docstring)."""
    if base_url is not None:
        bases = [base_url] if isinstance(base_url, str) else list(base_url)
    elif os.environ.get("BNLAB_DATA_URL", "").strip():
        root = os.environ["BNLAB_DATA_URL"].strip().rstrip("/")
        bases = [f"{root}/{source.dataset}/"]
    else:
        bases = list(source.mirrors)
    urls = []
    for base in bases:
        url = base.rstrip("/") + "/" + name
        _check_url(url)
        urls.append(url)
    return urls


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and parts.hostname in _LOOPBACK:
        return
    raise InsecureURLError(f"refusing to download from {url!r}: only https:// URLs "
                           "(or http:// on 127.0.0.1 / localhost) are allowed")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to URLs that pass the https rule (:func:`_check_url`)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        _check_url(urllib.parse.urljoin(req.full_url, newurl))
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_CheckedRedirects())


def default_deadline(size: int | None) -> float:
    """Seconds allowed for a whole file: env ``BNLAB_DOWNLOAD_DEADLINE``, else 300 s + size / 32 KiB/s."""
    env = os.environ.get("BNLAB_DOWNLOAD_DEADLINE", "").strip()
    if env:
        try:
            value = float(env)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise DataError(f"BNLAB_DOWNLOAD_DEADLINE={env!r} is not a positive number of seconds")
        return value
    return _DEADLINE_MARGIN_S + (size or 0) / _MIN_RATE


def _show_progress(progress: bool | None) -> bool:
    """None = automatic: a bar on an interactive terminal, none when env CI is set."""
    if progress is not None:
        return progress
    return sys.stderr.isatty() and not os.environ.get("CI")


def _progress_bar(total: int, name: str):
    """A tqdm byte counter, or None when tqdm is not installed."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total or None, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                leave=False)


def _fetch(url: str, spec: FileSpec, dest: Path, timeout: float, ends_at: float,
           progress: bool) -> None:
    """Stream ``url`` into ``dest`` atomically, hashing as it goes; verify before the rename.

    ``ends_at`` is a :func:`time.monotonic` instant: past it the transfer is abandoned
    (:class:`DeadlineError`) and nothing is kept.
    """
    def remaining() -> float:
        left = ends_at - time.monotonic()
        if left <= 0:
            raise DeadlineError(f"{spec.name}: download from {url} did not finish within its "
                                "deadline (set BNLAB_DOWNLOAD_DEADLINE to allow longer)")
        return left

    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    request = urllib.request.Request(url, headers={"User-Agent": "bnlab-data/1"})
    with atomic_open(dest, "wb") as out:
        with _OPENER.open(request, timeout=min(timeout, remaining())) as resp:
            bar = _progress_bar(spec.size or int(resp.headers.get("Content-Length") or 0),
                                spec.name) if progress else None
            try:
                # read1: return whatever has arrived, so the deadline is checked as bytes come
                while chunk := resp.read1(_CHUNK):
                    remaining()
                    out.write(chunk)
                    sha.update(chunk)
                    md5.update(chunk)
                    size += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                    if spec.size is not None and size > spec.size:
                        break  # more bytes than the official file has: stop reading, fail below
            finally:
                if bar is not None:
                    bar.close()
            announced = int(resp.headers.get("Content-Length") or -1)
        if 0 <= size < announced:  # connection dropped mid-way: a network error
            raise urllib.error.ContentTooShortError(
                f"transfer cut short: {size} of {announced} bytes", None)
        # raising here (inside atomic_open) deletes the temp file; dest stays untouched
        check_digests(spec, size, sha.hexdigest(), md5.hexdigest(), where=url)


def download_file(source: Source, name: str, dest_dir: str | os.PathLike, *,
                  base_url: str | Sequence[str] | None = None, timeout: float = 60.0,
                  deadline: float | None = None, progress: bool | None = None) -> Path:
    """Download one official file of ``source`` into ``dest_dir``; return its path.

    Tries each candidate URL in turn, all within ``deadline`` seconds (None =
    :func:`default_deadline`); ``timeout`` bounds each connect/read. Raises
    :class:`ChecksumError` when a URL served a file that does not match (after trying the
    others), :class:`DeadlineError` when the deadline passed, or :class:`DataError` listing
    what each URL answered when none could be reached. Nothing is left in ``dest_dir`` on
    failure.
    """
    spec = source.file(name)
    dest_dir = Path(dest_dir)
    dest = dest_dir / name
    ends_at = time.monotonic() + (default_deadline(spec.size) if deadline is None else deadline)
    failures: list[str] = []
    checksum_error: ChecksumError | None = None
    with writing(dest_dir):
        for url in candidate_urls(source, name, base_url):
            try:
                _fetch(url, spec, dest, timeout, ends_at, _show_progress(progress))
                return dest
            except DeadlineError:
                raise
            except ChecksumError as err:
                checksum_error = err
                failures.append(f"  {url}: {err}")
            except (InsecureURLError, urllib.error.URLError, http.client.HTTPException, OSError,
                    ValueError) as err:
                if time.monotonic() >= ends_at:  # a read timed out at the deadline
                    raise DeadlineError(f"{name}: download from {url} did not finish within its "
                                        f"deadline ({err})") from err
                failures.append(f"  {url}: {err}")
    if checksum_error is not None and len(failures) == 1:
        raise checksum_error
    kind = ChecksumError if checksum_error is not None else DataError
    raise kind(f"could not download {name} for {source.dataset}; tried:\n" + "\n".join(failures)
               + f"\nDownload it by hand from {source.homepage} into {dest_dir}/ "
               "or set BNLAB_DATA_URL to a mirror.")
