"""Input checks shared by the confusion, affinity and clustering modules.

Each check returns its input in one canonical form (numpy, a fixed dtype) or raises a
``ValueError`` that names the argument and the problem, so that callers can be written for the
canonical form alone. Torch tensors (on any device), numpy arrays and lists are accepted alike.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

# Rows of ``probs`` must sum to 1 within this: loose enough for float32 softmax
# outputs averaged over an ensemble, tight enough to catch logits passed by mistake.
PROB_SUM_TOL = 1e-3


def as_numpy(x: Any) -> np.ndarray:
    """Accept numpy arrays, lists and torch tensors (on any device) alike."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def check_count(value: object, name: str, low: int, high: int | None = None) -> int:
    """An int in ``[low, high]`` (``high=None``: no upper bound); bools are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} is {value!r}, expected an int")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} is {value}, must be {bound}")
    return value


def check_n_classes(n_classes: Any) -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)):
        raise ValueError(f"n_classes must be an int, got {type(n_classes).__name__}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    return int(n_classes)


def check_labels(y: Any, name: str, n_classes: int | None = None) -> np.ndarray:
    """Return ``y`` as a 1-D int64 array, checking it holds class indices in [0, C)."""
    y = as_numpy(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one class index per example), got shape {y.shape}")
    if y.size == 0:
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"{name} must hold integer class indices, got non-integer floats")
    elif y.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0:
        i = int(np.argmin(y))
        raise ValueError(f"{name}[{i}] is {y[i]}: class indices must be >= 0")
    if n_classes is not None and y.max() >= n_classes:
        i = int(np.argmax(y))
        raise ValueError(f"{name}[{i}] is class {y[i]} but there are only {n_classes} classes")
    return y


def check_square(matrix: Any, name: str) -> Any:
    """A finite, numeric (C, C) matrix with C >= 1, as float64.

    A ``scipy.sparse`` matrix stays sparse (a ``csr_array``, duplicates summed): the classes of
    the paper's scale do not fit a dense (C, C) array. Its checks read the stored entries only.
    """
    if sp.issparse(matrix):
        return _check_square_sparse(matrix, name)
    arr = as_numpy(matrix)
    if arr.dtype == object or arr.dtype.kind not in "iufb":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{name} must be a square (C, C) matrix, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 classes)")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite entries (NaN or inf)")
    return arr


def _check_square_sparse(matrix: Any, name: str) -> sp.csr_array:
    if matrix.dtype.kind not in "iufb":
        raise ValueError(f"{name} must be numeric, got dtype {matrix.dtype}")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be a square (C, C) matrix, got shape {matrix.shape}")
    if matrix.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 classes)")
    arr = sp.csr_array(matrix, dtype=np.float64, copy=True)
    arr.sum_duplicates()
    if not np.all(np.isfinite(arr.data)):
        raise ValueError(f"{name} contains non-finite entries (NaN or inf)")
    return arr


def check_confusion(confusion: Any, name: str = "confusion matrix") -> np.ndarray:
    """(C, C) confusion counts (rows = true class; expected, fractional counts allowed), float64."""
    arr = check_square(confusion, name)
    if sp.issparse(arr):
        if np.any(arr.data < 0):
            coo = arr.tocoo()
            k = np.flatnonzero(coo.data < 0)
            k = k[np.lexsort((coo.col[k], coo.row[k]))][0]  # the first in row-major order
            raise ValueError(f"{name} has a negative count {coo.data[k]} at ({coo.row[k]}, "
                             f"{coo.col[k]}); confusion counts are >= 0")
        return arr
    if np.any(arr < 0):
        i, j = np.argwhere(arr < 0)[0]
        raise ValueError(
            f"{name} has a negative count {arr[i, j]} at ({i}, {j}); confusion counts are >= 0"
        )
    return arr


def check_covariance(covariance: Any, name: str = "covariance matrix") -> np.ndarray:
    """A symmetric (C, C) covariance with a non-negative diagonal, made exactly symmetric."""
    arr = check_square(covariance, name)
    if sp.issparse(arr):
        scale = float(abs(arr).max())
        excess = abs(arr - arr.T) - 1e-7 * abs(arr.T)  # as np.allclose(arr, arr.T) below
        if excess.nnz and float(excess.max()) > 1e-9 * scale:
            raise ValueError(f"{name} is not symmetric")
        if np.any(arr.diagonal() < -1e-12 * scale):
            raise ValueError(f"{name} has a negative variance on its diagonal")
        return sp.csr_array((arr + arr.T) / 2)
    scale = float(np.max(np.abs(arr)))
    if not np.allclose(arr, arr.T, rtol=1e-7, atol=1e-9 * scale):
        raise ValueError(f"{name} is not symmetric")
    if np.any(np.diag(arr) < -1e-12 * scale):
        raise ValueError(f"{name} has a negative variance on its diagonal")
    return (arr + arr.T) / 2


def check_probs(probs: Any) -> np.ndarray:
    """Return probs as float64 (N, C); a (K, N, C) stack is averaged over its K members."""
    probs = as_numpy(probs)
    if probs.dtype.kind not in "iuf":
        raise ValueError(f"probs must be numeric, got dtype {probs.dtype}")
    probs = probs.astype(np.float64)
    if probs.ndim == 3:
        # An ensemble's members: its prediction is the mean of their distributions.
        probs = probs.mean(axis=0)  # (N, C)
    if probs.ndim != 2:
        raise ValueError(
            f"probs must be (N, C) probabilities or a (K, N, C) stack, got shape {probs.shape}"
        )
    n, c = probs.shape
    if n == 0 or c == 0:
        raise ValueError(f"probs is empty (shape {probs.shape}): need an example and a class")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probs contains NaN or infinite entries")
    if np.any(probs < 0):
        raise ValueError("probs contains negative entries: pass softmax probabilities, not logits")
    sums = probs.sum(axis=1)  # (N,)
    bad = np.flatnonzero(np.abs(sums - 1.0) > PROB_SUM_TOL)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"probs rows must sum to 1 but row {i} sums to {sums[i]:.6g}: "
            "pass softmax probabilities, not logits"
        )
    return probs


def check_class_names(class_names: Any, n_classes: int) -> list[str]:
    """C unique names as strings; None gives "0", "1", ..."""
    if class_names is None:
        return [str(i) for i in range(n_classes)]
    names = [str(s) for s in class_names]
    if len(names) != n_classes:
        raise ValueError(f"class_names has {len(names)} names but there are {n_classes} classes")
    if len(set(names)) != len(names):
        dup = next(s for s in names if names.count(s) > 1)
        raise ValueError(f"class_names must be unique, {dup!r} appears more than once")
    return names


def check_class_lists(subsets: object, n: int) -> list[list[int]]:
    """Lists of class indices in ``[0, n)``, none empty, no repeats inside one; any size."""
    if isinstance(subsets, str | bytes) or not isinstance(subsets, Sequence):
        raise ValueError(f"subsets is {type(subsets).__name__}, expected a list of lists")
    out = []
    for i, s in enumerate(subsets):
        if isinstance(s, str | bytes) or not isinstance(s, Sequence | np.ndarray):
            raise ValueError(f"subsets[{i}] is {type(s).__name__}, expected a list of classes")
        cls: list[int] = []
        for c in s:
            if isinstance(c, bool) or not isinstance(c, numbers.Integral):
                raise ValueError(f"subsets[{i}] contains {c!r}, expected int class indices")
            c = int(c)
            if not 0 <= c < n:
                raise ValueError(f"subsets[{i}] contains class {c} but there are only {n} classes")
            if c in cls:
                raise ValueError(f"subsets[{i}] contains class {c} more than once")
            cls.append(c)
        if not cls:
            raise ValueError(f"subsets[{i}] is empty")
        out.append(cls)
    return out
