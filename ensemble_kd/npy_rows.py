""".npy files of rows read and written by example position, with bounded resident memory.

The teacher cache (:mod:`ensemble_kd.cache`) keeps one row per transfer example. Reading: arrays up
to ``max_mapped_bytes`` are memory-mapped, which is fastest; larger ones are read row by row with
``os.preadv``. Memory-mapped pages that a random-access epoch touches count in the process's
resident memory until the kernel reclaims them, so an epoch over an 8 GB memory map ends up with
gigabytes resident; explicit reads go through the page cache, which does not count, and keep the
resident memory at one batch (measurements: ``docs/performance.md``). Writing: explicit positioned
writes into temporary files renamed into place on success.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .io import FormatError, atomic_path

NPY_MAGIC = b"\x93NUMPY"


def map_npy(path: Path) -> np.ndarray:
    """Memory-map an ``.npy`` array without unpickling, with errors in our words.

    numpy reads a file without the ``.npy`` magic as a pickle and, refusing it, advises loading it
    "unsafely" if one trusts it; that advice is never passed on.

    Raises:
        FileNotFoundError: no such file.
        FormatError: not an ``.npy`` array, an object array, or shorter than its header says.
    """
    with open(path, "rb") as f:
        magic = f.read(len(NPY_MAGIC))
    if magic != NPY_MAGIC:
        raise FormatError(f"{path}: truncated or corrupt: not an .npy array")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)  # checks header and size
    except (ValueError, OSError, EOFError) as e:
        if "object" in str(e).lower() or "pickle" in str(e).lower():
            reason = "it holds Python objects, which ensemble-kd never unpickles"
        else:
            reason = f"{e}".splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise FormatError(f"{path}: truncated or corrupt ({reason})") from None


class RowReader:
    """One ``.npy`` array of rows, (N, *row), read by example position.

    Memory-mapped when it holds at most ``max_mapped_bytes`` (or the platform has no ``preadv``),
    else read with explicit positioned reads so that no page of it stays mapped.
    """

    def __init__(self, path: Path, max_mapped_bytes: int):
        """Open ``path``, an ``.npy`` file.

        Raises:
            FileNotFoundError: no such file.
            FormatError: not an ``.npy`` array, an object array, truncated, or in Fortran order.
        """
        arr = map_npy(path)
        if not arr.flags.c_contiguous:
            raise FormatError(f"{path}: stored in Fortran order, expected C order")
        self.path, self.shape, self.dtype = path, arr.shape, arr.dtype
        self.nbytes = int(arr.nbytes)
        self.row_bytes = int(arr.dtype.itemsize * math.prod(arr.shape[1:]))
        self._map: np.ndarray | None = arr
        self._fd: int | None = None
        if self.nbytes > max_mapped_bytes and hasattr(os, "preadv"):
            self._offset = int(arr.offset)
            self._map = None
            del arr  # unmap: the mapping itself costs nothing, but no page should be touched
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    @property
    def streaming(self) -> bool:
        return self._fd is not None

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows at positions ``idx`` (B,): (B, *row), a fresh array."""
        if self._map is not None:
            return self._map[idx]
        if len(idx) == 0:
            return np.empty((0, *self.shape[1:]), self.dtype)
        order = np.argsort(idx, kind="stable")
        pos = idx[order]  # ascending: runs of consecutive positions become one read each
        buf = np.empty((len(idx), *self.shape[1:]), self.dtype)
        view = memoryview(buf.reshape(-1).view(np.uint8))
        starts = np.flatnonzero(np.diff(pos, prepend=pos[0] - 2) != 1)
        ends = np.append(starts[1:], len(pos))
        rb = self.row_bytes
        for a, b, p in zip(starts.tolist(), ends.tolist(), pos[starts].tolist(), strict=True):
            self._read_into(view[a * rb : b * rb], self._offset + p * rb)
        if np.array_equal(order, np.arange(len(idx))):
            return buf
        out = np.empty_like(buf)
        out[order] = buf
        return out

    def _read_into(self, view: memoryview, offset: int) -> None:
        while len(view):
            got = os.preadv(self._fd, [view], offset)
            if got <= 0:
                raise FormatError(f"{self.path}: file is shorter than its header says (truncated)")
            view, offset = view[got:], offset + got

    def close(self) -> None:
        self._map = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)


class RowWriter:
    """Several ``.npy`` files under temporary names, written by explicit positioned writes.

    The header and the file size come from ``open_memmap``; the rows are then written with
    ``os.pwrite`` rather than through the memory map, whose dirty pages would count in the writer's
    resident memory. All files are renamed into place on success.
    """

    def __init__(self, folder: Path, specs: dict[str, tuple[tuple[int, ...], type]]):
        """Files ``folder / f"{name}.npy"`` for each ``name -> (shape, numpy dtype)`` of ``specs``."""
        self.folder, self.specs, self._ctx = folder, specs, []
        self._files: dict[str, tuple[int, int, int]] = {}  # name -> fd, data offset, row bytes

    def __enter__(self) -> RowWriter:
        for name, (shape, dt) in self.specs.items():
            ctx = atomic_path(self.folder / f"{name}.npy")
            tmp = ctx.__enter__()
            self._ctx.append(ctx)
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dt, shape=shape)
            offset, row = int(arr.offset), int(np.dtype(dt).itemsize * math.prod(shape[1:]))
            del arr
            self._files[name] = (os.open(tmp, os.O_WRONLY), offset, row)
        return self

    def write(self, name: str, first_row: int, rows: np.ndarray) -> None:
        """Write ``rows`` (b, *row) of array ``name`` at row positions ``first_row`` onwards."""
        fd, offset, row = self._files[name]
        data = memoryview(np.ascontiguousarray(rows).reshape(-1).view(np.uint8))
        pos = offset + first_row * row
        while len(data):
            written = os.pwrite(fd, data, pos)
            data, pos = data[written:], pos + written

    def __exit__(self, *exc) -> None:
        for fd, _, _ in self._files.values():
            os.close(fd)
        self._files.clear()
        for ctx in self._ctx:  # fsync and rename (or remove on error)
            ctx.__exit__(*exc)
