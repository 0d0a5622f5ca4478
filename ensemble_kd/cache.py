"""Teacher-output cache: run every teacher once over the transfer set, keep the logits on disk.

Layout of a cache folder (example-major: one example's rows for all K teachers lie together, so a
random mini-batch is B reads, not K * B):

* dense: ``logits.npy`` (N, K, C) float16 or float32;
* top-k sparse: ``topk_values.npy`` (N, K, k), ``topk_indices.npy`` (N, K, k) and ``rest.npy``
  (N, K): the k largest logits of each example and one fill logit for all other classes, chosen
  so that at T = 1 the other classes share exactly the probability mass the teacher gave them,
  spread evenly;
* ``meta.json``: the logical shape [K, N, C], dtype, k and a *fingerprint* of the teachers' weights,
  the transfer inputs and these settings. A cache is used only when its fingerprint matches the one
  asked for; otherwise it is recomputed (never silently reused). ``meta.json`` is removed before
  new arrays are written and written last, so a crash in between leaves no cache that claims to be
  valid.

View caches (:mod:`ensemble_kd.views`). For V augmented views of N examples the arrays hold V * N
rows, row ``v * N + i`` for view v of example i (V blocks laid out like a plain cache of N rows),
and ``meta.json`` also records the view settings under ``views``. The fingerprint then covers the
view settings and their seed; with one view and no augmentation it is the plain cache's, so a plain
cache and a cache of ``ViewConfig()`` are one and the same file set.

Format versions. ``meta.json`` records the cache format ``version`` (:data:`CACHE_VERSION`), and it
is checked before any other field is interpreted:

* 1 (early development builds): teacher-major arrays (K, N, ...), finiteness not checked;
* 2 (ensemble-kd 0.1.0 on): example-major arrays (N, K, ...) holding finite values only.

A cache of another version is never read. An older one (or one without a version) is stale: the
same arrays in another layout could pass the shape check and be misread. A newer one, written by a
later ensemble-kd, may mean anything. Both are *rebuilt*: :func:`open_cache` raises a one-line
:class:`~ensemble_kd.io.FormatError` naming ``meta.json``, the version found and the one read, and
:func:`ensure_cache` logs that line as a warning and recomputes the cache in this version's format.
Refusing a newer cache would protect nothing: a cache holds no information of its own (it is a
pure function of the teachers, the inputs and the settings, all fingerprinted), so rebuilding
costs one pass of the teachers and loses nothing, while a refusal would stop a run that could
simply go on. (Config files and checkpoints, which cannot be rebuilt, are another matter.)

Writing goes chunk by chunk with explicit writes to a temporary file renamed into place, and refuses
non-finite logits (and logits beyond float16's range in a float16 cache), so a valid cache holds
finite values only and readers need not re-check them every step. Reading never loads the whole
cache: small arrays are memory-mapped, larger ones read row by row (:mod:`ensemble_kd.npy_rows`
explains why: resident memory).
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

from .io import FormatError, atomic_write_json, read_json
from .npy_rows import RowReader, RowWriter
from .predict import predict_logits
from .views import ViewConfig, ViewRows

log = logging.getLogger(__name__)
CACHE_VERSION = 2  # 2: example-major arrays (N, K, ...); finite values guaranteed (see above)
LAYOUT = "example-major"  # recorded in meta.json since version 2
# Arrays larger than this are read with explicit reads instead of a memory map (resident memory).
MAX_MAPPED_BYTES = 512 * 2**20
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


def cache_fingerprint(
    teachers_fp: str, inputs_fp: str, dtype: str, topk: int, views: ViewConfig | None = None
) -> str:
    """sha256 of what a cache's contents depend on. Views that are the plain inputs (one view, no
    augmentation) leave it as it was before views existed, so older caches stay valid."""
    items = [CACHE_VERSION, teachers_fp, inputs_fp, dtype, int(topk)]
    if views is not None and not views.plain:
        items.append(views.as_dict())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


class TeacherCache:
    """Read access to a cache folder; :meth:`batch` returns (K, B, C) float32 logits.

    Use :func:`ensure_cache` to get one; :func:`open_cache` opens an existing folder. Reads are
    thread safe (a prefetching thread may read the next batch while the model computes).
    """

    def __init__(self, folder: Path, meta: dict, arrays: dict[str, RowReader]):
        self.folder, self.meta, self.arrays = folder, meta, arrays
        self.n_teachers, self.n_examples, self.n_classes = meta["shape"]
        self.topk = int(meta["topk"])
        self.fingerprint = meta["fingerprint"]
        self.n_views = int(meta["views"]["views"]) if "views" in meta else 1  # V

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_teachers, self.n_examples, self.n_classes)

    @property
    def streaming(self) -> bool:
        """True when the arrays are read with explicit reads rather than a memory map."""
        return any(a.streaming for a in self.arrays.values())

    def batch(self, idx: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
        """Logits of every teacher for the examples at positions ``idx`` (B,): (K, B, C) float32.

        Raises:
            IndexError: a position outside [0, N).
        """
        idx = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx, dtype=np.int64)
        if idx.ndim != 1:
            raise IndexError(f"positions must be a 1-d sequence, got shape {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_examples):
            bad = int(idx[(idx < 0) | (idx >= self.n_examples)][0])
            raise IndexError(f"position {bad} is outside the cache's {self.n_examples} examples")
        k, b, c = self.n_teachers, len(idx), self.n_classes
        out = torch.empty((k, b, c), dtype=torch.float32)
        if not self.topk:
            rows = torch.from_numpy(self.arrays["logits"].take(idx))  # (B, K, C)
            return out.copy_(rows.permute(1, 0, 2))  # one copy: transpose and widen to float32
        vals = torch.from_numpy(self.arrays["topk_values"].take(idx)).permute(1, 0, 2)  # (K, B, k)
        ind = torch.from_numpy(self.arrays["topk_indices"].take(idx)).permute(1, 0, 2).long()
        rest = torch.from_numpy(self.arrays["rest"].take(idx)).T  # (K, B)
        out.copy_(rest[..., None].expand(k, b, c))
        return out.scatter_(-1, ind, vals.float())  # (K, B, C)

    def rows(self, idx: torch.Tensor, view: torch.Tensor | None) -> torch.Tensor:
        """The rows (B,) of a view cache holding example ``idx`` (B,) in view ``view`` (B,).

        Raises:
            IndexError: a view number outside [0, V).
        """
        if view is None:
            return idx
        if len(view):
            low, high = (int(v) for v in torch.aminmax(view))
            if low < 0 or high >= self.n_views:
                raise IndexError(f"view numbers must lie in [0, {self.n_views}) for this cache, "
                                 f"found [{low}, {high}]")
        return view * (self.n_examples // self.n_views) + idx

    def all(self) -> torch.Tensor:
        """The whole cache as (K, N, C) float32 (small caches only)."""
        return self.batch(np.arange(self.n_examples))

    def disk_bytes(self) -> int:
        return sum((self.folder / f"{name}.npy").stat().st_size for name in self.arrays)

    def close(self) -> None:
        """Release the files (also done when the cache is garbage collected)."""
        for a in self.arrays.values():
            a.close()

    def __enter__(self) -> TeacherCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_version(meta: dict, meta_path: Path) -> None:
    """Raise unless ``meta`` records :data:`CACHE_VERSION`, the one format this module reads.

    Args:
        meta: the parsed ``meta.json``.
        meta_path: its path, for the message.

    Raises:
        FormatError: one line naming ``meta_path``: an older version or none (stale), a newer
            version (written by a later ensemble-kd), or a version that is not an integer.
    """
    version = meta.get("version")
    if version == CACHE_VERSION and type(version) is int:
        return
    if version is None:
        found = "records no format version (written before versions were recorded)"
    elif type(version) is not int:
        raise FormatError(f"{meta_path}: malformed cache metadata (format version {version!r})")
    elif version > CACHE_VERSION:
        found = f"is format version {version}, written by a newer ensemble-kd"
    else:
        found = f"is format version {version}, from an older ensemble-kd"
    raise FormatError(
        f"{meta_path}: teacher cache {found}; this ensemble-kd reads version {CACHE_VERSION} only, "
        "so the cache is stale: ensure_cache and every command that distils rebuild it"
    )


def _array_specs(k: int, n: int, c: int, topk: int, dtype: str) -> dict[str, tuple[tuple, type]]:
    """Name -> (shape, numpy dtype) of the arrays of a cache."""
    if not topk:
        return {"logits": ((n, k, c), _DTYPES[dtype])}
    return {
        "topk_values": ((n, k, topk), _DTYPES[dtype]),
        "topk_indices": ((n, k, topk), np.int16 if c < 2**15 else np.int32),
        "rest": ((n, k), np.float32),
    }


def open_cache(
    folder: str | os.PathLike,
    expect_fingerprint: str | None = None,
    *,
    max_mapped_bytes: int = MAX_MAPPED_BYTES,
) -> TeacherCache:
    """Open an existing cache folder.

    Args:
        folder: the cache folder.
        expect_fingerprint: refuse a cache made from other teachers, inputs or settings.
        max_mapped_bytes: arrays up to this size are memory-mapped, larger ones streamed with
            explicit reads (bounded resident memory).

    Raises:
        FileNotFoundError: no cache there.
        FormatError: missing or truncated arrays, inconsistent shapes or dtypes, another format
            version (see the module docstring), or a fingerprint other than ``expect_fingerprint``.
    """
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder}: no teacher cache (meta.json missing)")
    meta = read_json(meta_path)
    if not isinstance(meta, dict):
        raise FormatError(f"{meta_path}: malformed cache metadata (not a JSON object)")
    check_version(meta, meta_path)
    try:
        k, n, c = (int(s) for s in meta["shape"])
        topk = int(meta["topk"])
        fp = meta["fingerprint"]
        dtype = meta["dtype"]
    except (KeyError, TypeError, ValueError):
        raise FormatError(f"{meta_path}: malformed cache metadata") from None
    if meta.get("layout", LAYOUT) != LAYOUT:
        raise FormatError(f"{meta_path}: unknown cache layout {meta['layout']!r}")
    if "views" in meta:
        v = meta["views"].get("views") if isinstance(meta["views"], dict) else None
        if type(v) is not int or v < 1 or n % v:
            raise FormatError(f"{meta_path}: malformed view settings (views {v!r} for {n} rows)")
    if expect_fingerprint is not None and fp != expect_fingerprint:
        raise FormatError(
            f"{folder}: cache fingerprint does not match these teachers and inputs (stale cache)"
        )
    if dtype not in _DTYPES:
        raise FormatError(f"{meta_path}: unknown cache dtype {dtype!r}")
    arrays = {}
    for name, (shape, dt) in _array_specs(k, n, c, topk, dtype).items():
        path = folder / f"{name}.npy"
        try:
            arr = RowReader(path, max_mapped_bytes)
        except FileNotFoundError:
            raise FormatError(f"{path}: missing from the cache") from None
        except FormatError:
            raise
        except (ValueError, OSError) as e:
            raise FormatError(f"{path}: truncated or corrupt ({e})") from None
        if arr.shape != shape or arr.dtype != np.dtype(dt):
            found, expected = (arr.shape, arr.dtype.str), (shape, np.dtype(dt).str)
            arr.close()
            raise FormatError(f"{path}: shape and dtype {found}, expected {expected}")
        arrays[name] = arr
    return TeacherCache(folder, meta, arrays)


def _check_stored(stored: torch.Tensor, first: int, dtype: str, n_examples: int) -> None:
    """Refuse a chunk (b, K, C) of rows ``first...`` holding non-finite values: the cache promises
    finite logits. Row r is view r // n_examples of example r % n_examples.

    A float16 chunk is checked after rounding, which also catches logits beyond its range.
    """
    if bool(torch.isfinite(stored).all()):
        return
    bad = ~torch.isfinite(stored.flatten(2)).all(-1)  # (b, K)
    row, t = (int(v) for v in bad.nonzero()[0])
    reason = "non-finite (nan or inf)"
    if dtype == "float16":
        reason += " or beyond float16's range (+-65504: use cache dtype float32)"
    view, example = divmod(first + row, n_examples)
    raise ValueError(
        f"teacher {t} gives logits that are {reason} for transfer example {example}"
        + (f" in view {view}" if view else "") + "; a teacher cache holds finite logits only"
    )


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
    max_mapped_bytes: int = MAX_MAPPED_BYTES,
    views: ViewConfig | None = None,
) -> TeacherCache:
    """Run each teacher over ``x`` (N, ...) (or V views of it) in chunks and write the cache folder.

    Args:
        teachers: K models with the same number of classes.
        x: transfer-set inputs.
        folder: destination (created; an old cache there is replaced).
        dtype: "float16" or "float32" storage of the logits.
        topk: 0 for dense logits, else keep the k largest per example (1 <= k < C).
        batch_size: examples per forward pass and per write.
        device: where to run the teachers.
        fingerprint: precomputed fingerprint (else computed).
        max_mapped_bytes: passed to :func:`open_cache` for the returned cache.
        views: cache the teachers' logits for ``views.views`` views of every example, made chunk by
            chunk (rows ``v * N + i``); None or plain views: the examples themselves.

    Raises:
        ValueError: bad settings, teachers that disagree on the class count, non-finite logits, or
            logits beyond float16's range in a float16 cache.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"cache dtype must be float16 or float32, got {dtype!r}")
    if not teachers:
        raise ValueError("no teachers to cache")
    if len(x) == 0:
        raise ValueError("the transfer set is empty")
    if views is not None:
        views = None if views.validate(tuple(x.shape[1:])).plain else views
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fp = fingerprint or cache_fingerprint(
        teachers_fingerprint(teachers), inputs_fingerprint(x), dtype, topk, views
    )
    (folder / "meta.json").unlink(missing_ok=True)  # no valid cache until the new one is complete
    n_examples = len(x)
    if views is not None:  # V * N rows, each view made from its key when its chunk is written
        x = ViewRows(x, views)
    k, n = len(teachers), len(x)
    c = int(predict_logits(teachers[0], x[:1], device=device).shape[-1])
    if topk and not 1 <= topk < c:
        raise ValueError(
            f"cache_topk must lie in [1, {c - 1}] for {c} classes (0 = dense), got {topk}"
        )
    specs = _array_specs(k, n, c, topk, dtype)
    store = torch.float16 if dtype == "float16" else torch.float32
    with RowWriter(folder, specs) as out:
        for i in range(0, n, batch_size):
            xb = x[i : i + batch_size]
            # dense: the teachers' logits go straight into the example-major storage buffer,
            # rounded on the way (one pass); top-k needs them in float32 first
            v = torch.empty((len(xb), k, c), dtype=store if not topk else torch.float32)
            for t, model in enumerate(teachers):
                logits = predict_logits(model, xb, device=device)  # (b, C)
                if logits.shape[-1] != c:
                    raise ValueError(
                        f"teacher {t} has {logits.shape[-1]} classes, teacher 0 has {c}"
                    )
                v[:, t] = logits
            _check_stored(v, i, dtype if not topk else "float32", n_examples)
            if not topk:
                out.write("logits", i, v.numpy())
                continue
            vals, ind = v.topk(topk, dim=-1)  # (b, K, k)
            vals = vals.to(store)
            _check_stored(vals, i, dtype, n_examples)
            # log of the mass outside the top k, summed directly (no cancellation when the
            # teacher is confident and that mass is tiny)
            rest_lse = torch.logsumexp(v.scatter(-1, ind, float("-inf")), -1)  # (b, K)
            out.write("topk_values", i, vals.numpy())
            out.write("topk_indices", i, ind.numpy().astype(specs["topk_indices"][1]))
            out.write("rest", i, (rest_lse - np.log(c - topk)).numpy().astype(np.float32))
    meta = {
        "version": CACHE_VERSION,
        "fingerprint": fp,
        "shape": [k, n, c],
        "dtype": dtype,
        "topk": int(topk),
        "layout": LAYOUT,  # arrays are (N, K, ...)
        **({"views": views.as_dict()} if views is not None else {}),  # rows v * N + i
    }
    atomic_write_json(folder / "meta.json", meta)
    return open_cache(folder, fp, max_mapped_bytes=max_mapped_bytes)


def ensure_cache(
    teachers: Sequence[nn.Module],
    x: torch.Tensor,
    folder: str | os.PathLike,
    *,
    dtype: str = "float32",
    topk: int = 0,
    device: str | torch.device | None = None,
    max_mapped_bytes: int = MAX_MAPPED_BYTES,
    views: ViewConfig | None = None,
) -> TeacherCache:
    """The cache in ``folder`` if it was made from these teachers, inputs and settings (and views),
    else a rebuilt one.

    ``max_mapped_bytes``: see :func:`open_cache`; ``views``: see :func:`write_cache`.
    """
    if views is not None:
        views = None if views.validate(tuple(x.shape[1:])).plain else views
    fp = cache_fingerprint(teachers_fingerprint(teachers), inputs_fingerprint(x), dtype, topk, views)
    try:
        return open_cache(folder, fp, max_mapped_bytes=max_mapped_bytes)
    except FileNotFoundError:
        pass
    except FormatError as e:
        log.warning("recomputing the teacher cache: %s", e)
    return write_cache(
        teachers, x, folder, dtype=dtype, topk=topk, device=device, fingerprint=fp,
        max_mapped_bytes=max_mapped_bytes, views=views,
    )
