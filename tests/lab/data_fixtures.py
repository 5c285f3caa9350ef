"""Helpers for the data tests: tiny datasets in the official formats and a local HTTP server.

The encoders here are written from the format specifications (IDX: big-endian header +
row-major data; CIFAR: a tar.gz of protocol-2 pickles of ``{b"data", b"labels", ...}``),
independently of the readers under test, so a round trip is a real check.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np

from bnlab.lab.data.sources import FileSpec, Source

IDX_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B,
             np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes of ``array``: 0x0000, type code, ndim, big-endian uint32 dims, data."""
    big = np.dtype(array.dtype).newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    header = struct.pack(">HBB", 0, IDX_CODES[np.dtype(big)], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=big).tobytes()


def mnist_like(n_train: int = 30, n_test: int = 20, seed: int = 0):
    """Random uint8 images (n, 28, 28) + labels, and the four official .gz file contents."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train": (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
                  rng.integers(0, 10, n_train).astype(np.uint8)),
        "test": (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
                 rng.integers(0, 10, n_test).astype(np.uint8)),
    }
    files = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = arrays[split]
        files[f"{prefix}-images-idx3-ubyte.gz"] = gzip.compress(encode_idx(images), mtime=0)
        files[f"{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(encode_idx(labels), mtime=0)
    return arrays, files


def cifar_batch_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A CIFAR batch as the official files hold it (protocol 2, bytes keys)."""
    batch = {b"batch_label": b"testing batch", b"labels": labels, b"data": data,
             b"filenames": [b"x.png"] * len(labels)}
    return pickle.dumps(batch, protocol=2)


def tar_gz(members: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    """A .tar.gz holding ``members`` (name -> content) plus raw ``extra`` TarInfos."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return buf.getvalue()


def cifar_like(per_batch: int = 4, seed: int = 0):
    """Random CIFAR-10 train (5 batches) and test arrays + the official tar.gz contents.

    Returns ``arrays`` with ``(data (n, 3072) uint8, labels (n,) int64)`` per split and
    ``files = {"cifar-10-python.tar.gz": bytes}``.
    """
    rng = np.random.default_rng(seed)
    members, arrays = {}, {"train": [], "test": []}
    names = [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]
    for name, split in names:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        members[f"cifar-10-batches-py/{name}"] = cifar_batch_pickle(data, labels)
        arrays[split].append((data, np.array(labels, dtype=np.int64)))
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"num_cases_per_batch": 10},
                                                               protocol=2)
    arrays = {s: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v]))
              for s, v in arrays.items()}
    return arrays, {"cifar-10-python.tar.gz": tar_gz(members)}


def source_for(source: Source, files: dict[str, bytes]) -> Source:
    """``source`` with each file's size/SHA-256/MD5 replaced by those of ``files``."""
    specs = tuple(FileSpec(name, len(content), hashlib.sha256(content).hexdigest(),
                           hashlib.md5(content).hexdigest()) for name, content in files.items())
    return replace(source, files=specs)


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (root / name).write_bytes(content)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; counts requests. Per file name: ``truncate`` sends half the body,
    ``trickle`` sends one byte every 0.5 s, ``redirects`` maps a request path to a Location."""

    requests: list[str]
    truncate: set[str]
    trickle: set[str]
    redirects: dict[str, str]

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        name = self.path.rsplit("/", 1)[-1]
        if self.path in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if name in self.truncate or name in self.trickle:
            body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if name in self.truncate:
                self.wfile.write(body[: len(body) // 2])
            else:
                self._trickle(body)
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def _trickle(self, body: bytes) -> None:
        try:
            for i in range(len(body)):
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:  # the client gave up
            pass


@contextlib.contextmanager
def serve(directory: Path, truncate: set[str] | None = None, trickle: set[str] | None = None,
          redirects: dict[str, str] | None = None) -> Iterator[tuple[str, list[str]]]:
    """Serve ``directory`` on http://127.0.0.1:<ephemeral port>; yield (base URL, request log)."""
    log: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": log, "truncate": truncate or set(),
                                            "trickle": trickle or set(),
                                            "redirects": redirects or {}})

    def factory(*args, **kwargs):
        return handler(*args, directory=str(directory), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), factory)
    server.daemon_threads = True
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
