"""Confusion counts: who was predicted as whom, the most confused pairs, the mass inside groups.

Plain tallies that a reader can check by hand (the confusion report prints them). How strongly two
classes are related for clustering is :mod:`specialists.affinity`'s job, not this module's.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix

from .checks import check_confusion, check_labels, check_n_classes
from .sparse import block_sum, compact

__all__ = ["cluster_mass", "confusion_matrix", "most_confused_pairs"]


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int, *,
                     sparse: bool = False) -> Any:
    """Count how often each true class was predicted as each class.

    Args:
        y_true: (N,) true class indices in ``[0, n_classes)``.
        y_pred: (N,) predicted class indices in ``[0, n_classes)``.
        n_classes: C, the number of classes; classes with no example still get a row.
        sparse: return a ``scipy.sparse.csr_array`` (at most N + C stored entries) instead of a
            dense array: for many classes, where (C, C) would not fit in memory.

    Returns:
        (C, C) int64 counts; ``cm[i, j]`` = examples of true class i predicted as j.

    Raises:
        ValueError: lengths differ, or an index is outside ``[0, n_classes)``.
    """
    c = check_n_classes(n_classes)
    y_true = check_labels(y_true, "y_true", c)
    y_pred = check_labels(y_pred, "y_pred", c)
    if y_true.shape[0] != y_pred.shape[0]:
        raise ValueError(
            f"y_true has {y_true.shape[0]} labels but y_pred has {y_pred.shape[0]} predictions"
        )
    if sparse:
        ones = np.ones(y_true.shape[0], dtype=np.int64)
        return compact(sp.coo_array((ones, (y_true, y_pred)), shape=(c, c)))
    if y_true.size == 0:
        return np.zeros((c, c), dtype=np.int64)
    with warnings.catch_warnings():
        # sklearn warns when only one label occurs, even though labels= fixes the shape.
        warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
        cm = _sk_confusion_matrix(y_true, y_pred, labels=np.arange(c))
    return cm.astype(np.int64)  # (C, C)


def most_confused_pairs(cm: Any, top: int | None = 10, *, symmetric: bool = False) -> list[dict]:
    """The class pairs with the most confusions, largest first.

    Only pairs with at least one confusion are listed. Directed rows are
    ``{true, predicted, count, rate}`` where ``rate = count / (examples of true)``.
    Symmetric rows are ``{a, b, count, rate}`` with ``a < b``,
    ``count = cm[a, b] + cm[b, a]`` and ``rate = count / (examples of a and b)``,
    the share of the two classes' examples that went to the other one.
    Ties in count are broken by the class indices, ascending.

    Args:
        cm: (C, C) non-negative counts, rows = true class; dense or ``scipy.sparse``.
        top: at most this many rows; ``None`` lists every confused pair.
        symmetric: merge both directions of each unordered pair.

    Returns:
        List of dicts with int indices and counts and float rates.
    """
    cm = check_confusion(cm, "cm")
    if top is not None and (isinstance(top, bool) or not isinstance(top, (int, np.integer))
                            or top < 0):
        raise ValueError(f"top must be a non-negative int or None, got {top!r}")
    rows = np.asarray(cm.sum(axis=1)).ravel()  # (C,) examples per true class
    # The nonzero entries as coordinates: dense and sparse alike, no (C, C) index arrays.
    m = sp.csr_array(cm)  # canonical: check_confusion summed a sparse one's duplicates
    if symmetric:
        coo = sp.triu(m + m.T, k=1, format="coo")  # (a, b) with a < b: both directions
    else:
        coo = m.tocoo()
    keep = (coo.data > 0) & (coo.row != coo.col)
    i, j, n = coo.row[keep], coo.col[keep], coo.data[keep]
    if top is not None and 0 < int(top) < n.size:  # sort only the pairs that can make the top
        kth = np.partition(n, n.size - int(top))[n.size - int(top)]
        tied_or_above = n >= kth
        i, j, n = i[tied_or_above], j[tied_or_above], n[tied_or_above]
    order = np.lexsort((j, i, -n))  # count descending, then the indices ascending
    if top is not None:
        order = order[: int(top)]
    out: list[dict] = []
    for a, b, cnt in zip(i[order], j[order], n[order], strict=True):
        if symmetric:
            total = rows[a] + rows[b]
            out.append({"a": int(a), "b": int(b), "count": _num(cnt),
                        "rate": float(cnt / total) if total > 0 else 0.0})
        else:
            out.append({"true": int(a), "predicted": int(b), "count": _num(cnt),
                        "rate": float(cnt / rows[a])})
    return out


def _num(x: Any) -> int | float:
    """A count as a Python int when it is whole (the usual case), else a float."""
    x = float(x)
    return int(x) if x.is_integer() else x


def cluster_mass(cm: Any, clusters: list[list[int]]) -> list[float]:
    """Confusion counts inside each cluster, off the diagonal.

    Args:
        cm: (C, C) non-negative counts, dense or ``scipy.sparse``.
        clusters: lists of class indices.

    Returns:
        One float per cluster: ``sum cm[i, j]`` over i != j both in the cluster.
    """
    cm = check_confusion(cm, "cm")
    out = []
    for k, members in enumerate(clusters):
        idx = np.asarray(list(members), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= cm.shape[0]):
            bad = int(idx[(idx < 0) | (idx >= cm.shape[0])][0])
            raise ValueError(
                f"clusters[{k}] contains class {bad} but there are only {cm.shape[0]} classes"
            )
        inside = block_sum(cm, idx, idx) if idx.size else 0.0
        out.append(inside - float(cm.diagonal()[idx].sum()))  # (C,)[idx]: an empty sum is 0
    return out
