"""Class affinity: how strongly two classes are mistaken for each other (DESIGN.md sec. 3).

The one definition of "confusable" in this package: the clustering
(:func:`specialists.clustering.cluster_classes`), the choice of specialist subsets
(:func:`specialists.clustering.select_subsets`, :func:`specialists.selection.choose_subsets`) and
the confusion report's tables and dendrogram all read :func:`class_affinity`. Two signals feed it:

* ``kind="confusion"``: a (C, C) confusion matrix of counts, rows = true class (the labelled
  signal; expected, fractional counts work too) -> :func:`confusion_affinity`.
* ``kind="covariance"``: the (C, C) covariance of a model's predicted distributions over a data set
  (the paper's label-free signal, :func:`prediction_covariance`) -> :func:`covariance_affinity`.
* ``kind="affinity"``: an affinity computed already (e.g. the rows and columns of some classes
  cut out of one), checked and passed through.

Either way the affinity is a symmetric, non-negative (C, C) matrix with a zero diagonal. A
``scipy.sparse`` input gives a sparse affinity (``csr_array``), computed without any dense (C, C)
array (:mod:`specialists.sparse`), with the same values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from .checks import (
    check_class_lists,
    check_confusion,
    check_covariance,
    check_probs,
    check_square,
)
from .sparse import block_sum, compact, is_sparse, row_top_k, scale, without_diagonal

__all__ = [
    "KINDS",
    "class_affinity",
    "confusion_affinity",
    "confusion_rates",
    "covariance_affinity",
    "prediction_covariance",
    "subset_mass",
]

KINDS = ("confusion", "covariance", "affinity")


def confusion_rates(confusion: Any) -> np.ndarray:
    """Row-normalise a confusion matrix of counts: ``R[i, j] = P(predict j | true i)``.

    Args:
        confusion: (C, C) non-negative counts, rows = true class.

    Returns:
        (C, C) float64; each row with examples sums to 1, a row without any stays all zero.
    """
    arr = check_confusion(confusion)
    if is_sparse(arr):
        totals = np.asarray(arr.sum(axis=1)).ravel()  # (C,)
        inv = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
        return scale(arr, inv)
    totals = arr.sum(axis=1, keepdims=True)  # (C, 1)
    return np.divide(arr, totals, out=np.zeros_like(arr), where=totals > 0)


def confusion_affinity(confusion: Any) -> np.ndarray:
    """Affinity from confusion counts: the symmetrised error rate ``A = (R + R.T) / 2``.

    ``R`` is :func:`confusion_rates` and the diagonal is set to 0, so ``A[a, b]`` is the mean of
    "share of a's examples predicted as b" and "share of b's predicted as a". Rates rather than
    counts, so that a frequent class does not dominate the affinities of rare ones; rates rather
    than shares of each class's *mistakes*, so that a class that is rarely wrong has a low affinity
    with every class: it is the class a specialist could help least, and
    :func:`specialists.selection.choose_subsets` leaves it out. A pair is close when either
    direction is frequent (a class right 99% of the time whose partner sends it 30% of its
    examples has affinity ~0.155 with that partner).

    Args:
        confusion: (C, C) non-negative counts, rows = true class.

    Returns:
        (C, C) symmetric float64, zero diagonal, entries in [0, 1].
    """
    r = confusion_rates(confusion)
    if is_sparse(r):
        return without_diagonal((r + r.T) / 2.0)
    a = (r + r.T) / 2.0
    np.fill_diagonal(a, 0.0)
    return a


def covariance_affinity(covariance: Any) -> np.ndarray:
    """Affinity from the covariance of predicted distributions: the clipped correlation.

    The covariance is scaled to a correlation (so classes that are predicted often, and so vary
    more, do not dominate), the negative part is clipped to zero (classes that do *not* rise
    together are unrelated, not "anti-similar": spectral clustering needs non-negative weights)
    and the diagonal is removed. Classes that are never predicted (zero variance) have zero
    affinity.

    Args:
        covariance: (C, C) symmetric covariance, e.g. :func:`prediction_covariance`.

    Returns:
        (C, C) symmetric float64, zero diagonal, entries in [0, 1].
    """
    arr = check_covariance(covariance)
    if is_sparse(arr):
        std = np.sqrt(np.clip(arr.diagonal(), 0.0, None))  # (C,)
        inv = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0)
        corr = without_diagonal(scale(arr, inv, inv))
        corr.data = np.clip(corr.data, 0.0, 1.0)
        return compact(corr)
    std = np.sqrt(np.clip(np.diag(arr), 0.0, None))  # (C,)
    outer = np.outer(std, std)
    corr = np.divide(arr, outer, out=np.zeros_like(arr), where=outer > 0)
    aff = np.clip(corr, 0.0, 1.0)
    np.fill_diagonal(aff, 0.0)
    return aff


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    return kind


def class_affinity(matrix: Any, kind: str = "confusion") -> np.ndarray:
    """The affinity between classes from either signal.

    Args:
        matrix: (C, C) confusion counts (``kind="confusion"``), prediction covariance
            (``kind="covariance"``) or an affinity already (``kind="affinity"``: symmetric and
            non-negative; its diagonal is ignored).
        kind: ``"confusion"`` (:func:`confusion_affinity`), ``"covariance"``
            (:func:`covariance_affinity`) or ``"affinity"``.

    Returns:
        (C, C) symmetric float64, zero diagonal, entries >= 0 (in [0, 1] from either signal);
        a ``scipy.sparse.csr_array`` when ``matrix`` is sparse.
    """
    kind = check_kind(kind)
    if kind == "confusion":
        return confusion_affinity(matrix)
    if kind == "covariance":
        return covariance_affinity(matrix)
    a = check_square(matrix, "affinity")
    if is_sparse(a):
        if np.any(a.data < 0):
            raise ValueError("affinity has negative entries")
        excess = abs(a - a.T) - 1e-9 * abs(a.T)  # as np.allclose(a, a.T, rtol=1e-9, atol=0)
        if excess.nnz and float(excess.max()) > 0:
            raise ValueError("affinity is not symmetric")
        return without_diagonal((a + a.T) / 2)
    if np.any(a < 0):
        raise ValueError("affinity has negative entries")
    if not np.allclose(a, a.T, rtol=1e-9, atol=0.0):
        raise ValueError("affinity is not symmetric")
    a = (a + a.T) / 2
    np.fill_diagonal(a, 0.0)
    return a


def prediction_covariance(probs: Any, *, top_k: int | None = None) -> Any:
    """Covariance of the predicted probabilities of each pair of classes.

    The paper's label-free signal for finding confusable classes: two classes that the model
    tends to give probability to on the same examples have a positive covariance.

    Args:
        probs: (N, C) predicted distributions, N >= 2 (a (K, N, C) stack is averaged first).
        top_k: None: the exact dense covariance. An int k: the covariance of the truncated
            predictions ``p~`` (each example's probabilities outside its k most probable classes
            set to 0), as a sparse matrix, with no (C, C) array built: a pair of classes never
            both among one example's top k has ``cov(p~_i, p~_j) = -N mu~_i mu~_j / (N - 1)
            <= 0``, which is left out (an implicit 0); :func:`covariance_affinity` keeps
            positive covariances only, so the affinity is exactly that of the dense covariance
            of ``p~``. With k = C it is the exact covariance.

    Returns:
        (C, C) float64, ``np.cov(probs, rowvar=False)``; a ``scipy.sparse.csr_array`` when
        ``top_k`` is given.
    """
    probs = check_probs(probs)
    n, c = probs.shape
    if n < 2:
        raise ValueError(f"prediction_covariance needs at least 2 examples, got {n}")
    if top_k is None:
        return np.atleast_2d(np.cov(probs, rowvar=False))  # (C, C)
    cols, vals = row_top_k(probs, top_k)  # (N, k) each example's top k
    rows = np.repeat(np.arange(n), cols.shape[1])
    p_top = sp.csr_array((vals.ravel(), (rows, cols.ravel())), shape=(n, c))  # (N, C) sparse
    mu = np.asarray(p_top.sum(axis=0)).ravel() / n  # (C,) mean of p~
    gram = sp.coo_array(p_top.T @ p_top)  # (C, C) sum_n p~_ni p~_nj, pairs that co-occur only
    data = (gram.data - n * mu[gram.row] * mu[gram.col]) / (n - 1)
    return compact(sp.coo_array((data, (gram.row, gram.col)), shape=(c, c)))


def subset_mass(matrix: Any, subsets: Sequence[Sequence[int]], *,
                kind: str = "confusion") -> np.ndarray:
    """Affinity inside each subset: ``sum A[i, j]`` over ordered pairs i != j of its classes.

    For confusion counts this is the summed rate at which members are mistaken for other members:
    the errors a specialist on the subset could fix.

    Args:
        matrix: (C, C) confusion counts or prediction covariance.
        subsets: M lists of class indices (any size).
        kind: as for :func:`class_affinity`.

    Returns:
        (M,) float64.
    """
    a = class_affinity(matrix, kind)
    subsets = check_class_lists(subsets, a.shape[0])
    return np.array([block_sum(a, s, s) for s in subsets], dtype=float)
