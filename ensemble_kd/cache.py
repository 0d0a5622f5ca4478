"""Teacher-output cache: run every teacher once over the transfer set, keep the logits on disk.

Layout of a cache folder:

* dense: ``logits.npy`` (K, N, C) float16 or float32;
* top-k sparse: ``topk_values.npy`` (K, N, k), ``topk_indices.npy`` (K, N, k) and ``rest.npy`` (K, N):
  the k largest logits of each example and one fill logit for all other classes, chosen so that at
  T = 1 the other classes share exactly the probability mass the teacher gave them, spread evenly;
* ``meta.json``: shapes, dtype, k and a *fingerprint* of the teachers' weights, the transfer inputs and
  these settings. A cache is used only when its fingerprint matches the one asked for; otherwise it is
  recomputed (never silently reused). ``meta.json`` is removed before new arrays are written and written
  last, so a crash in between leaves no cache that claims to be valid.

Arrays are written in chunks to a temporary file and renamed into place, and read by memory map, so
neither writing nor reading holds the whole cache in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .io import FormatError, atomic_path, atomic_write_json, read_json
from .predict import predict_logits

log = logging.getLogger(__name__)
CACHE_VERSION = 1
_DTYPES = {"float16": np.float16, "float32": np.float32}


def tensor_digest(h: hashlib._Hash, t: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and raw bytes to a hash."""
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def teachers_fingerprint(teachers: Sequence[nn.Module]) -> str:
    """sha256 of every teacher's architecture spec and weights, in order."""
    h = hashlib.sha256()
    for m in teachers:
        h.update(json.dumps(getattr(m, "spec", type(m).__name__), sort_keys=True).encode())
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode())
            tensor_digest(h, v)
    return h.hexdigest()


def inputs_fingerprint(x: torch.Tensor) -> str:
    h = hashlib.sha256()
    tensor_digest(h, x)
    return h.hexdigest()


def cache_fingerprint(teachers_fp: str, inputs_fp: str, dtype: str, topk: int) -> str:
    blob = json.dumps([CACHE_VERSION, teachers_fp, inputs_fp, dtype, int(topk)])
    return hashlib.sha256(blob.encode()).hexdigest()


class TeacherCache:
    """Read access to a cache folder; :meth:`batch` returns (K, B, C) float32 logits.

    Use :func:`ensure_cache` to get one; :func:`open_cache` opens an existing folder.
    """

    def __init__(self, folder: Path, meta: dict, arrays: dict[str, np.ndarray]):
        self.folder, self.meta, self.arrays = folder, meta, arrays
        self.n_teachers, self.n_examples, self.n_classes = meta["shape"]
        self.topk = int(meta["topk"])
        self.fingerprint = meta["fingerprint"]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_teachers, self.n_examples, self.n_classes)

    def batch(self, idx: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Logits of every teacher for the examples at positions ``idx`` (B,): (K, B, C) float32."""
        idx = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx, dtype=np.int64)
        if not self.topk:
            return torch.from_numpy(np.ascontiguousarray(self.arrays["logits"][:, idx])).float()
        vals = torch.from_numpy(np.ascontiguousarray(self.arrays["topk_values"][:, idx])).float()
        ind = torch.from_numpy(self.arrays["topk_indices"][:, idx].astype(np.int64))
        rest = torch.from_numpy(np.ascontiguousarray(self.arrays["rest"][:, idx])).float()
        full = rest[..., None].expand(self.n_teachers, len(idx), self.n_classes).clone()
        return full.scatter_(-1, ind, vals)  # (K, B, C)

    def all(self) -> torch.Tensor:
        """The whole cache as (K, N, C) float32 (small caches only)."""
        return self.batch(np.arange(self.n_examples))

    def disk_bytes(self) -> int:
        return sum((self.folder / f"{name}.npy").stat().st_size for name in self.arrays)


def open_cache(folder: str | os.PathLike, expect_fingerprint: str | None = None) -> TeacherCache:
    """Open an existing cache folder.

    Raises:
        FileNotFoundError: no cache there.
        FormatError: missing or truncated arrays, inconsistent shapes, or a fingerprint other than
            ``expect_fingerprint``.
    """
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder}: no teacher cache (meta.json missing)")
    meta = read_json(meta_path)
    try:
        k, n, c = (int(s) for s in meta["shape"])
        topk = int(meta["topk"])
        fp = meta["fingerprint"]
    except (KeyError, TypeError, ValueError):
        raise FormatError(f"{meta_path}: malformed cache metadata") from None
    if expect_fingerprint is not None and fp != expect_fingerprint:
        raise FormatError(
            f"{folder}: cache fingerprint does not match these teachers and inputs (stale cache)"
        )
    expected = (
        {"logits": (k, n, c)}
        if not topk
        else {"topk_values": (k, n, topk), "topk_indices": (k, n, topk), "rest": (k, n)}
    )
    arrays = {}
    for name, shape in expected.items():
        path = folder / f"{name}.npy"
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise FormatError(f"{path}: missing from the cache") from None
        except (ValueError, OSError) as e:
            raise FormatError(f"{path}: truncated or corrupt ({e})") from None
        if arr.shape != shape:
            raise FormatError(f"{path}: shape {arr.shape}, expected {shape}")
        arrays[name] = arr
    return TeacherCache(folder, meta, arrays)


def write_cache(
    teachers: Sequence[nn.Module],
    x: torch.Tensor,
    folder: str | os.PathLike,
    *,
    dtype: str = "float32",
    topk: int = 0,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
    fingerprint: str | None = None,
) -> TeacherCache:
    """Run each teacher over ``x`` (N, ...) in chunks and write the cache folder.

    Args:
        teachers: K models with the same number of classes.
        x: transfer-set inputs.
        folder: destination (created; an old cache there is replaced).
        dtype: "float16" or "float32" storage of the logits.
        topk: 0 for dense logits, else keep the k largest per example (1 <= k < C).
        batch_size: examples per forward pass and per write.
        device: where to run the teachers.
        fingerprint: precomputed fingerprint (else computed).
    """
    if dtype not in _DTYPES:
        raise ValueError(f"cache dtype must be float16 or float32, got {dtype!r}")
    if not teachers:
        raise ValueError("no teachers to cache")
    if len(x) == 0:
        raise ValueError("the transfer set is empty")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fp = fingerprint or cache_fingerprint(
        teachers_fingerprint(teachers), inputs_fingerprint(x), dtype, topk
    )
    (folder / "meta.json").unlink(missing_ok=True)  # no valid cache until the new one is complete
    k, n = len(teachers), len(x)
    c = int(predict_logits(teachers[0], x[:1], device=device).shape[-1])
    if topk and not 1 <= topk < c:
        raise ValueError(f"cache_topk must lie in [1, {c - 1}] for {c} classes (0 = dense), got {topk}")
    np_dtype = _DTYPES[dtype]
    names = {"logits": ((k, n, c), np_dtype)} if not topk else {
        "topk_values": ((k, n, topk), np_dtype),
        "topk_indices": ((k, n, topk), np.int16 if c < 2**15 else np.int32),
        "rest": ((k, n), np.float32),
    }
    with _AtomicArrays(folder, names) as out:
        for t, model in enumerate(teachers):
            for i in range(0, n, batch_size):
                logits = predict_logits(model, x[i : i + batch_size], device=device)  # (b, C)
                if logits.shape[-1] != c:
                    raise ValueError(
                        f"teacher {t} has {logits.shape[-1]} classes, teacher 0 has {c}"
                    )
                if not topk:
                    out["logits"][t, i : i + len(logits)] = logits.numpy()
                    continue
                vals, ind = logits.topk(topk, dim=-1)
                # log of the mass outside the top k, summed directly (no cancellation when the
                # teacher is confident and that mass is tiny)
                rest_lse = torch.logsumexp(logits.scatter(-1, ind, float("-inf")), -1)
                out["topk_values"][t, i : i + len(logits)] = vals.numpy()
                out["topk_indices"][t, i : i + len(logits)] = ind.numpy()
                out["rest"][t, i : i + len(logits)] = (rest_lse - np.log(c - topk)).numpy()
    meta = {
        "version": CACHE_VERSION,
        "fingerprint": fp,
        "shape": [k, n, c],
        "dtype": dtype,
        "topk": int(topk),
    }
    atomic_write_json(folder / "meta.json", meta)
    return open_cache(folder, fp)


class _AtomicArrays:
    """Open several .npy memmaps under temporary names; rename all into place on success."""

    def __init__(self, folder: Path, specs: dict):
        self.folder, self.specs, self._ctx, self.arrays = folder, specs, [], {}

    def __enter__(self) -> dict[str, np.ndarray]:
        for name, (shape, dt) in self.specs.items():
            ctx = atomic_path(self.folder / f"{name}.npy")
            tmp = ctx.__enter__()
            self._ctx.append(ctx)
            self.arrays[name] = np.lib.format.open_memmap(tmp, mode="w+", dtype=dt, shape=shape)
        return self.arrays

    def __exit__(self, *exc) -> None:
        for arr in self.arrays.values():
            arr.flush()
        self.arrays.clear()
        for ctx in self._ctx:
            ctx.__exit__(*exc)


def ensure_cache(
    teachers: Sequence[nn.Module],
    x: torch.Tensor,
    folder: str | os.PathLike,
    *,
    dtype: str = "float32",
    topk: int = 0,
    device: str | torch.device | None = None,
) -> TeacherCache:
    """Return the cache in ``folder`` if it was made from these teachers and inputs, else rebuild it."""
    fp = cache_fingerprint(teachers_fingerprint(teachers), inputs_fingerprint(x), dtype, topk)
    try:
        return open_cache(folder, fp)
    except FileNotFoundError:
        pass
    except FormatError as e:
        log.warning("recomputing the teacher cache: %s", e)
    return write_cache(teachers, x, folder, dtype=dtype, topk=topk, device=device, fingerprint=fp)
