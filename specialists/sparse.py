"""(C, C) class matrices, dense or sparse: the few operations subset choice needs on both.

A confusion matrix of the paper's 15,000 classes has 225 million cells (1.8 GB as float64), and
most of them are 0. :mod:`specialists.affinity`, :mod:`specialists.clustering` and
:mod:`specialists.selection` accept a ``scipy.sparse`` matrix for it and then never build a dense
(C, C) array: they go through the helpers below, which do the dense computation exactly as before
for a numpy array and the sparse one for a sparse matrix (kept as ``scipy.sparse.csr_array``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = [
    "block_row_sums",
    "block_sum",
    "compact",
    "is_sparse",
    "row_max",
    "row_top_k",
    "scale",
    "submatrix",
    "upper_pairs",
    "without_diagonal",
    "zero_outside",
]

Matrix = Any  # np.ndarray or scipy.sparse.csr_array, (C, C)


def is_sparse(x: Any) -> bool:
    """True for any ``scipy.sparse`` matrix or array."""
    return sp.issparse(x)


def compact(a: sp.csr_array) -> sp.csr_array:
    """Canonical CSR: duplicates summed, explicit zeros dropped, indices sorted, int32 indices
    where they fit (a sparse product reads them at every step: half the bytes of int64).

    The argument is never changed; the result may share arrays with it.
    """
    a = sp.csr_array(a)  # may share its arrays with the argument: never changed in place below
    if not a.has_canonical_format or not np.all(a.data):
        a = a.copy()
        a.sum_duplicates()
        a.eliminate_zeros()
    if a.nnz < 2**31 - 1 and max(a.shape) < 2**31 - 1:
        a = sp.csr_array((a.data, a.indices.astype(np.int32, copy=False),
                          a.indptr.astype(np.int32, copy=False)), shape=a.shape)
    return a


def without_diagonal(a: sp.csr_array) -> sp.csr_array:
    """``a`` with its diagonal removed (sparse; the dense code uses ``np.fill_diagonal``)."""
    coo = a.tocoo()
    off = coo.row != coo.col
    return compact(sp.coo_array((coo.data[off], (coo.row[off], coo.col[off])), shape=a.shape))


def scale(a: sp.csr_array, left: np.ndarray | None = None,
          right: np.ndarray | None = None) -> sp.csr_array:
    """``diag(left) @ a @ diag(right)`` for a CSR ``a``, by scaling its stored entries (no
    sparse product, no copy of the structure beyond one)."""
    a = compact(a)
    data = a.data.copy()
    if left is not None:
        data *= np.repeat(np.asarray(left, dtype=np.float64), np.diff(a.indptr))
    if right is not None:
        data *= np.asarray(right, dtype=np.float64)[a.indices]
    return compact(sp.csr_array((data, a.indices, a.indptr), shape=a.shape))


def _rows_in(a: sp.csr_array, rows: Any, cols: Any) -> tuple[sp.csr_array, np.ndarray]:
    """The rows ``rows`` of ``a``, and a mask over their stored entries: column in ``cols``."""
    sub = a[np.asarray(rows, dtype=np.int64)]
    inside = np.zeros(a.shape[1], dtype=bool)
    inside[np.asarray(cols, dtype=np.int64)] = True
    return sub, inside[sub.indices]


def row_max(a: Matrix) -> np.ndarray:
    """(C,) the largest entry of each row (implicit zeros count)."""
    if is_sparse(a):
        return np.asarray(a.max(axis=1).toarray()).ravel()
    return a.max(axis=1)


def row_top_k(p: np.ndarray, top_k: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``top_k`` largest entries of a dense (N, C) ``p``, in no particular order.

    Returns:
        (columns (N, k), values (N, k)) with k = min(top_k, C).

    Raises:
        ValueError: ``top_k`` is not a positive int.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    k = min(int(top_k), p.shape[1])
    cols = np.argpartition(-p, k - 1, axis=1)[:, :k]  # (N, k)
    return cols, np.take_along_axis(p, cols, axis=1)


def zero_outside(a: Matrix, keep: np.ndarray) -> Matrix:
    """A copy of ``a`` with the rows and columns of the classes not in ``keep`` set to 0."""
    if is_sparse(a):
        mask = np.zeros(a.shape[0])
        mask[keep] = 1.0
        return scale(a, mask, mask)
    out = a.copy()
    drop = np.setdiff1d(np.arange(a.shape[0]), keep)
    out[drop] = 0.0
    out[:, drop] = 0.0
    return out


def submatrix(a: Matrix, rows: Sequence[int] | np.ndarray,
              cols: Sequence[int] | np.ndarray) -> Matrix:
    """``a[rows][:, cols]``, sparse for a sparse ``a``."""
    if is_sparse(a):
        return compact(a[np.asarray(rows, dtype=np.int64)][:, np.asarray(cols, dtype=np.int64)])
    return a[np.ix_(rows, cols)]


def block_sum(a: Matrix, rows: Sequence[int], cols: Sequence[int]) -> float:
    """``sum a[i, j]`` over i in ``rows``, j in ``cols``."""
    if is_sparse(a):
        sub, hit = _rows_in(a, rows, cols)
        return float(sub.data[hit].sum())
    return float(a[np.ix_(rows, cols)].sum())


def block_row_sums(a: Matrix, rows: Sequence[int] | np.ndarray,
                   cols: Sequence[int] | np.ndarray) -> np.ndarray:
    """(len(rows),) ``sum_{j in cols} a[i, j]`` for each i in ``rows``; ``a`` symmetric.

    Sparse: the columns' rows are summed instead (``a[cols].sum(axis=0)``, equal by symmetry),
    when they are fewer, so that only ``min(len(rows), len(cols))`` rows are read.
    """
    if is_sparse(a):
        if len(cols) < len(rows):
            sums = np.asarray(a[np.asarray(cols, dtype=np.int64)].sum(axis=0)).ravel()  # (C,)
            return sums[np.asarray(rows, dtype=np.int64)]
        sub, hit = _rows_in(a, rows, cols)
        owner = np.repeat(np.arange(len(rows)), np.diff(sub.indptr))  # row of each entry
        return np.bincount(owner[hit], weights=sub.data[hit], minlength=len(rows))
    return a[np.ix_(rows, cols)].sum(axis=1)


def upper_pairs(a: Matrix, threshold: float) -> np.ndarray:
    """(P, 2) the pairs i < j with ``a[i, j] >= threshold`` (threshold > 0), row-major order."""
    if is_sparse(a):
        up = sp.triu(a, k=1, format="coo")
        hit = up.data >= threshold
        pairs = np.stack([up.row[hit], up.col[hit]], axis=1).astype(np.int64)
        return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    return np.argwhere(np.triu(a >= threshold, k=1))
