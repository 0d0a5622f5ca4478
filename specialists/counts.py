"""Confusion counts: who was predicted as whom, the most confused pairs, the mass inside groups.

Plain tallies that a reader can check by hand (the confusion report prints them). How strongly two
classes are related for clustering is :mod:`specialists.affinity`'s job, not this module's.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix

from .checks import check_confusion, check_labels, check_n_classes

__all__ = ["cluster_mass", "confusion_matrix", "most_confused_pairs"]


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int) -> np.ndarray:
    """Count how often each true class was predicted as each class.

    Args:
        y_true: (N,) true class indices in ``[0, n_classes)``.
        y_pred: (N,) predicted class indices in ``[0, n_classes)``.
        n_classes: C, the number of classes; classes with no example still get a row.

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
        cm: (C, C) non-negative counts, rows = true class.
        top: at most this many rows; ``None`` lists every confused pair.
        symmetric: merge both directions of each unordered pair.

    Returns:
        List of dicts with int indices and counts and float rates.
    """
    cm = check_confusion(cm, "cm")
    if top is not None and (isinstance(top, bool) or not isinstance(top, (int, np.integer))
                            or top < 0):
        raise ValueError(f"top must be a non-negative int or None, got {top!r}")
    rows = cm.sum(axis=1)  # (C,) examples per true class
    c = cm.shape[0]
    out: list[dict] = []
    if symmetric:
        both = cm + cm.T  # (C, C)
        a_idx, b_idx = np.triu_indices(c, k=1)
        counts = both[a_idx, b_idx]
        keep = counts > 0
        for a, b, n in zip(a_idx[keep], b_idx[keep], counts[keep], strict=True):
            total = rows[a] + rows[b]
            out.append({"a": int(a), "b": int(b), "count": _num(n),
                        "rate": float(n / total) if total > 0 else 0.0})
        out.sort(key=lambda d: (-d["count"], d["a"], d["b"]))
    else:
        t_idx, p_idx = np.nonzero(cm)
        for t, p in zip(t_idx, p_idx, strict=True):
            if t == p:
                continue
            n = cm[t, p]
            out.append({"true": int(t), "predicted": int(p), "count": _num(n),
                        "rate": float(n / rows[t])})
        out.sort(key=lambda d: (-d["count"], d["true"], d["predicted"]))
    return out if top is None else out[: int(top)]


def _num(x: Any) -> int | float:
    """A count as a Python int when it is whole (the usual case), else a float."""
    x = float(x)
    return int(x) if x.is_integer() else x


def cluster_mass(cm: Any, clusters: list[list[int]]) -> list[float]:
    """Confusion counts inside each cluster, off the diagonal.

    Args:
        cm: (C, C) non-negative counts.
        clusters: lists of class indices.

    Returns:
        One float per cluster: ``sum cm[i, j]`` over i != j both in the cluster.
    """
    cm = check_confusion(cm, "cm").astype(np.float64)
    out = []
    for k, members in enumerate(clusters):
        idx = np.asarray(list(members), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= cm.shape[0]):
            bad = int(idx[(idx < 0) | (idx >= cm.shape[0])][0])
            raise ValueError(
                f"clusters[{k}] contains class {bad} but there are only {cm.shape[0]} classes"
            )
        block = cm[np.ix_(idx, idx)]  # (|S|, |S|)
        out.append(float(block.sum() - np.trace(block)))
    return out
