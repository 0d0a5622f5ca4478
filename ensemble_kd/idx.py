"""IDX files, the format of MNIST and Fashion-MNIST: read (gzipped or raw) and write."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from ensemble_kd.io import atomic_write_bytes

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/ format).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzipped or raw.

    Compression is detected from the gzip magic bytes, not the file name. The
    header is 2 zero bytes, a type code (0x08 = uint8, ...), the number of
    dimensions, then one big-endian uint32 per dimension.

    Args:
        path: the file.

    Returns:
        An array with the header's shape, in native byte order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: bad magic number, unknown type code, truncated or over-long
            payload, or a corrupt gzip stream; the message names the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file: {len(raw)} bytes, no complete header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(
            f"{path}: not an IDX file: wrong magic number 0x{raw[:4].hex()} "
            "(expected 2 zero bytes, a type code such as 0x08, and the number of dimensions)"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize
    found = len(raw) - header
    if found < expected:
        raise ValueError(
            f"{path}: truncated IDX file: header shape {shape} needs {expected} bytes of data, "
            f"found {found}"
        )
    if found > expected:
        raise ValueError(
            f"{path}: {found - expected} unexpected bytes after the data of shape {shape}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, atomically; gzipped when ``path`` ends in ``.gz``.

    Args:
        path: destination.
        array: at least 1-D, of dtype uint8, int8, int16, int32, float32 or float64.
    """
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(
            f"write_idx cannot store dtype {array.dtype}; supported: "
            f"{', '.join(str(d) for d in codes)}"
        )
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"write_idx needs an array of 1 to 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)  # mtime=0: same array -> same bytes
    atomic_write_bytes(path, data)
