"""Reader for the IDX format of MNIST and Fashion-MNIST (optionally gzip-compressed).

IDX layout (LeCun et al., http://yann.lecun.com/exdb/mnist/), all integers big-endian::

    bytes 0-1   0x00 0x00
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                              0x0D float32, 0x0E float64
    byte  3     number of dimensions d
    4*d bytes   the size of each dimension (uint32)
    then        prod(sizes) elements, row-major

So a label file starts with magic 0x00000801 (d = 1) and an image file with 0x00000803
(d = 3). The reader checks the magic, the element type, the number of dimensions when
expected, and that exactly prod(sizes) elements follow: truncated or padded files raise
:class:`FormatError`.
"""
from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from .errors import FormatError

_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_BYTES = 1 << 30  # refuse to inflate more than 1 GiB (the largest official file is 47 MB)


def gunzip(raw: bytes, name: str = "<bytes>") -> bytes:
    """``raw`` decompressed when it starts with the gzip magic, else ``raw`` itself."""
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
            data = gz.read(_MAX_BYTES + 1)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
        raise FormatError(f"{name}: corrupt or truncated gzip data ({err}); delete the file "
                          "and download it again") from err
    if len(data) > _MAX_BYTES:
        raise FormatError(f"{name}: inflates to more than {_MAX_BYTES} bytes; not an IDX file")
    return data


def parse_idx(data: bytes, *, ndim: int | None = None, name: str = "<bytes>") -> np.ndarray:
    """Decode uncompressed IDX bytes into a native-endian NumPy array (a copy)."""
    if len(data) < 4:
        raise FormatError(f"{name}: {len(data)} bytes is too short for an IDX header")
    zero, type_code, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code not in _DTYPES:
        raise FormatError(f"{name}: bad IDX magic number 0x{int.from_bytes(data[:4], 'big'):08X} "
                          "(expected 0x000008xx); not an IDX file")
    if ndim is not None and dims != ndim:
        raise FormatError(f"{name}: IDX file has {dims} dimensions, expected {ndim} "
                          f"(magic 0x0000{type_code:02X}{ndim:02X})")
    header = 4 + 4 * dims
    if len(data) < header:
        raise FormatError(f"{name}: truncated IDX header")
    shape = struct.unpack(f">{dims}I", data[4:header])
    dtype = np.dtype(_DTYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        raise FormatError(f"{name}: IDX file {what}: shape {tuple(shape)} needs {expected} "
                          f"data bytes, found {got}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike, *, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a NumPy array; see :func:`parse_idx`."""
    path = Path(path)
    return parse_idx(gunzip(path.read_bytes(), str(path)), ndim=ndim, name=str(path))


def read_idx_pair(images_path: str | os.PathLike, labels_path: str | os.PathLike,
                  *, num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """An MNIST-style image file + label file as ``(uint8 (N, 1, H, W), int64 (N,))``.

    Checks that the image file is 3-d uint8, the label file 1-d uint8, that both hold
    the same N and that every label is in ``[0, num_classes)``.
    """
    return idx_pair(read_idx(images_path, ndim=3), read_idx(labels_path, ndim=1),
                    images_path, labels_path, num_classes=num_classes)


def idx_pair(images: np.ndarray, labels: np.ndarray, images_path: object, labels_path: object,
             *, num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Check decoded image (N, H, W) / label (N,) arrays and return them as tensors."""
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise FormatError(f"{images_path}, {labels_path}: expected uint8 IDX data, "
                          f"got {images.dtype} and {labels.dtype}")
    if images.shape[0] != labels.shape[0]:
        raise FormatError(f"{images_path} holds {images.shape[0]} images but {labels_path} "
                          f"holds {labels.shape[0]} labels")
    if labels.size and int(labels.max()) >= num_classes:
        raise FormatError(f"{labels_path}: label {int(labels.max())} is not in 0..{num_classes - 1}")
    x = torch.from_numpy(images).unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
    y = torch.from_numpy(labels.astype(np.int64))  # (N,)
    return x, y
