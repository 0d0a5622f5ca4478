"""Where a classifier is confused: confusion matrices, confused pairs, class clusters.

The numbers behind the confusion report (:mod:`specialists.report`) and behind
the choice of specialist subsets (Hinton, Vinyals & Dean 2015, section 5):

* :func:`confusion_matrix` counts (true, predicted) pairs; rows are the true class.
* :func:`row_normalise` turns counts into rates per true class.
* :func:`symmetrised_confusion` is the labelled affinity between classes
  (how often a and b are mistaken for each other, in either direction).
* :func:`prediction_covariance` is the paper's label-free signal: the
  covariance of the columns of the predicted distributions.
* :func:`analyse` bundles everything, clusters included, into a
  :class:`ConfusionAnalysis` that serialises to JSON.

Predictions can be saved and re-analysed later with :func:`save_predictions`
and :func:`load_predictions` (a plain ``.npz``, read without pickle).
"""

from __future__ import annotations

import math
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix

from ensemble_kd.io import FormatError, atomic_path
from specialists.clustering import cluster_classes

__all__ = [
    "ConfusionAnalysis",
    "analyse",
    "cluster_mass",
    "confusion_matrix",
    "default_n_clusters",
    "load_predictions",
    "most_confused_pairs",
    "prediction_covariance",
    "row_normalise",
    "save_predictions",
    "symmetrised_confusion",
]

# Rows of ``probs`` must sum to 1 within this: loose enough for float32 softmax
# outputs averaged over an ensemble, tight enough to catch logits passed by mistake.
_PROB_SUM_TOL = 1e-3


# ---------------------------------------------------------------------------
# input checks


def _as_numpy(x: Any) -> np.ndarray:
    """Accept numpy arrays, lists and torch tensors (on any device) alike."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_labels(y: Any, name: str, n_classes: int | None = None) -> np.ndarray:
    """Return ``y`` as a 1-D int64 array, checking it holds class indices in [0, C)."""
    y = _as_numpy(y)
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
        raise ValueError(
            f"{name}[{i}] is class {y[i]} but there are only {n_classes} classes"
        )
    return y


def _check_n_classes(n_classes: Any) -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)):
        raise ValueError(f"n_classes must be an int, got {type(n_classes).__name__}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    return int(n_classes)


def _check_square(cm: Any, name: str = "cm") -> np.ndarray:
    cm = _as_numpy(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"{name} must be a square (C, C) matrix, got shape {cm.shape}")
    if cm.dtype.kind not in "iufb":
        raise ValueError(f"{name} must be numeric, got dtype {cm.dtype}")
    if not np.all(np.isfinite(cm)):
        raise ValueError(f"{name} contains NaN or infinite entries")
    if np.any(cm < 0):
        raise ValueError(f"{name} contains negative entries; confusion counts are >= 0")
    return cm


def _check_probs(probs: Any) -> np.ndarray:
    """Return probs as float64 (N, C); a (K, N, C) stack is averaged over its K members."""
    probs = _as_numpy(probs)
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
    bad = np.flatnonzero(np.abs(sums - 1.0) > _PROB_SUM_TOL)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"probs rows must sum to 1 but row {i} sums to {sums[i]:.6g}: "
            "pass softmax probabilities, not logits"
        )
    return probs


def _check_class_names(class_names: Any, n_classes: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(n_classes)]
    names = [str(s) for s in class_names]
    if len(names) != n_classes:
        raise ValueError(f"class_names has {len(names)} names but there are {n_classes} classes")
    if len(set(names)) != len(names):
        dup = next(s for s in names if names.count(s) > 1)
        raise ValueError(f"class_names must be unique, {dup!r} appears more than once")
    return names


# ---------------------------------------------------------------------------
# confusion functions


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
    c = _check_n_classes(n_classes)
    y_true = _check_labels(y_true, "y_true", c)
    y_pred = _check_labels(y_pred, "y_pred", c)
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


def row_normalise(cm: Any) -> np.ndarray:
    """Turn counts into rates per true class: each row sums to 1.

    Args:
        cm: (C, C) non-negative counts, rows = true class.

    Returns:
        (C, C) float64; row i is the distribution of predictions for true class i.
        A row with no examples stays all zero (rather than NaN).
    """
    cm = _check_square(cm).astype(np.float64)
    rows = cm.sum(axis=1, keepdims=True)  # (C, 1)
    out = np.zeros_like(cm)
    np.divide(cm, rows, out=out, where=rows > 0)
    return out


def symmetrised_confusion(cm: Any, normalise: bool = True) -> np.ndarray:
    """Affinity between classes: how much a and b are mistaken for each other.

    ``S = (R + R^T) / 2`` with a zero diagonal, where R is the row-normalised
    confusion (or the raw counts when ``normalise=False``). Normalising first
    keeps a large class from dominating the affinities of small ones.

    Args:
        cm: (C, C) non-negative counts, rows = true class.
        normalise: row-normalise before symmetrising.

    Returns:
        (C, C) float64, symmetric, zero diagonal, entries >= 0.
    """
    r = row_normalise(cm) if normalise else _check_square(cm).astype(np.float64)
    s = (r + r.T) / 2.0  # (C, C)
    np.fill_diagonal(s, 0.0)
    return s


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
    cm = _check_square(cm)
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


def prediction_covariance(probs: Any) -> np.ndarray:
    """Covariance of the predicted probabilities of each pair of classes.

    The paper's label-free signal for finding confusable classes: two classes
    that the model tends to give probability to on the same examples have a
    positive covariance.

    Args:
        probs: (N, C) predicted distributions, N >= 2.

    Returns:
        (C, C) float64, ``np.cov(probs, rowvar=False)``.
    """
    probs = _check_probs(probs)
    if probs.shape[0] < 2:
        raise ValueError(f"prediction_covariance needs at least 2 examples, got {probs.shape[0]}")
    return np.atleast_2d(np.cov(probs, rowvar=False))  # (C, C)


def cluster_mass(cm: Any, clusters: list[list[int]]) -> list[float]:
    """Confusion counts inside each cluster, off the diagonal.

    Args:
        cm: (C, C) non-negative counts.
        clusters: lists of class indices.

    Returns:
        One float per cluster: ``sum cm[i, j]`` over i != j both in the cluster.
    """
    cm = _check_square(cm).astype(np.float64)
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


def default_n_clusters(n_classes: int) -> int:
    """The number of clusters :func:`analyse` uses when none is given.

    ``round(sqrt(C))`` clipped to ``[2, C - 1]``: clusters of about sqrt(C)
    classes each, and never the trivial all-in-one or all-singletons split.
    For C <= 2 no non-trivial split exists; the answer is 1.
    """
    c = _check_n_classes(n_classes)
    if c <= 2:
        return 1
    return int(min(max(round(math.sqrt(c)), 2), c - 1))


# ---------------------------------------------------------------------------
# the bundle


@dataclass(eq=False)  # array fields: == would be ambiguous, so identity it is
class ConfusionAnalysis:
    """Everything the confusion report shows, for C classes and n examples.

    Attributes:
        class_names: C names, index = class.
        counts: (C, C) int64 confusion counts, rows = true class.
        normalised: (C, C) float64 row-normalised confusion.
        per_class_accuracy: (C,) float64 recall of each class; NaN for a class with no example.
        accuracy: overall fraction correct.
        pairs: directed most-confused pairs (see :func:`most_confused_pairs`).
        pairs_symmetric: unordered most-confused pairs.
        covariance: (C, C) prediction covariance, or None (fewer than 2 examples).
        clusters: class subsets, most-confused first, each sorted.
        cluster_mass: off-diagonal confusion counts inside each cluster.
        n: number of examples.
        method: the clustering method used.
        notes: remarks for the reader (e.g. "no confusion: clusters are singletons").
    """

    class_names: list[str]
    counts: np.ndarray
    normalised: np.ndarray
    per_class_accuracy: np.ndarray
    accuracy: float
    pairs: list[dict]
    pairs_symmetric: list[dict]
    covariance: np.ndarray | None
    clusters: list[list[int]]
    cluster_mass: list[float]
    n: int
    method: str = "spectral"
    notes: list[str] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        """JSON-ready copy: arrays become nested lists, NaN becomes None."""
        return {
            "class_names": list(self.class_names),
            "n": int(self.n),
            "accuracy": float(self.accuracy),
            "per_class_accuracy": [None if np.isnan(a) else float(a)
                                   for a in self.per_class_accuracy],
            "counts": np.asarray(self.counts).astype(np.int64).tolist(),
            "normalised": np.asarray(self.normalised, dtype=np.float64).tolist(),
            "pairs": [dict(p) for p in self.pairs],
            "pairs_symmetric": [dict(p) for p in self.pairs_symmetric],
            "covariance": None if self.covariance is None
            else np.asarray(self.covariance, dtype=np.float64).tolist(),
            "clusters": [[int(i) for i in s] for s in self.clusters],
            "cluster_mass": [float(m) for m in self.cluster_mass],
            "method": self.method,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ConfusionAnalysis:
        """Rebuild an analysis from :meth:`to_dict` output (e.g. a saved ``report.json``)."""
        try:
            return cls(
                class_names=[str(s) for s in d["class_names"]],
                counts=np.asarray(d["counts"], dtype=np.int64),
                normalised=np.asarray(d["normalised"], dtype=np.float64),
                per_class_accuracy=np.array(
                    [np.nan if a is None else a for a in d["per_class_accuracy"]],
                    dtype=np.float64),
                accuracy=float(d["accuracy"]),
                pairs=[dict(p) for p in d["pairs"]],
                pairs_symmetric=[dict(p) for p in d["pairs_symmetric"]],
                covariance=None if d.get("covariance") is None
                else np.asarray(d["covariance"], dtype=np.float64),
                clusters=[[int(i) for i in s] for s in d["clusters"]],
                cluster_mass=[float(m) for m in d["cluster_mass"]],
                n=int(d["n"]),
                method=str(d.get("method", "spectral")),
                notes=[str(s) for s in d.get("notes", [])],
            )
        except KeyError as e:
            raise ValueError(f"confusion analysis dict lacks the key {e.args[0]!r}") from None


def analyse(
    probs: Any,
    y: Any,
    *,
    class_names: list[str] | None = None,
    n_clusters: int | None = None,
    method: str = "spectral",
    top: int = 10,
    kind: str = "confusion",
    random_state: int = 0,
) -> ConfusionAnalysis:
    """Analyse where a classifier (or an ensemble) is confused.

    Args:
        probs: (N, C) predicted probabilities: one model's softmax, an ensemble's
            mean, or ``load_predictions(path)[0]``. A (K, N, C) stack of K
            members is averaged first. Predictions are the argmax.
        y: (N,) true class indices in ``[0, C)``.
        class_names: C names (default "0", "1", ...).
        n_clusters: number of class clusters; default :func:`default_n_clusters`
            (round(sqrt(C)) clipped to [2, C - 1]).
        method: clustering method passed to
            :func:`specialists.clustering.cluster_classes` ("spectral",
            "agglomerative" or "kmeans").
        top: how many confused pairs to list.
        kind: what to cluster: ``"confusion"`` (the labelled confusion counts) or
            ``"covariance"`` (the label-free prediction covariance).
        random_state: seed for the clustering.

    Returns:
        A :class:`ConfusionAnalysis`. When the model makes no mistake there is
        nothing to cluster: the clusters are singletons and ``notes`` says so.
    """
    probs = _check_probs(probs)  # (N, C)
    n, c = probs.shape
    y = _check_labels(y, "y", c)
    if y.shape[0] != n:
        raise ValueError(f"probs has {n} rows but y has {y.shape[0]} labels")
    names = _check_class_names(class_names, c)
    if kind not in ("confusion", "covariance"):
        raise ValueError(f"kind must be 'confusion' or 'covariance', got {kind!r}")
    if n_clusters is None:
        n_clusters = default_n_clusters(c)
    elif (isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer))
          or not 1 <= n_clusters <= c):
        raise ValueError(f"n_clusters must be an int in [1, {c}] (C = {c}), got {n_clusters!r}")
    n_clusters = int(n_clusters)

    y_pred = probs.argmax(axis=1)  # (N,)
    counts = confusion_matrix(y, y_pred, c)  # (C, C)
    rows = counts.sum(axis=1)  # (C,)
    per_class = np.full(c, np.nan)
    np.divide(np.diag(counts), rows, out=per_class, where=rows > 0)
    covariance = prediction_covariance(probs) if n >= 2 else None

    notes: list[str] = []
    absent = [names[i] for i in np.flatnonzero(rows == 0)]
    if absent:
        notes.append(f"{len(absent)} class(es) have no example: {', '.join(absent[:10])}"
                     + (" ..." if len(absent) > 10 else ""))
    off_diag = counts.sum() - np.trace(counts)
    clusters = _clusters(counts, covariance, n_clusters, method, kind, random_state, off_diag,
                         notes)

    return ConfusionAnalysis(
        class_names=names,
        counts=counts,
        normalised=row_normalise(counts),
        per_class_accuracy=per_class,
        accuracy=float(np.trace(counts) / n),
        pairs=most_confused_pairs(counts, top),
        pairs_symmetric=most_confused_pairs(counts, top, symmetric=True),
        covariance=covariance,
        clusters=clusters,
        cluster_mass=cluster_mass(counts, clusters),
        n=int(n),
        method=method,
        notes=notes,
    )


def _clusters(counts: np.ndarray, covariance: np.ndarray | None, n_clusters: int, method: str,
              kind: str, random_state: int, off_diag: float, notes: list[str]) -> list[list[int]]:
    """Cluster the classes, or explain why the answer is trivial."""
    c = counts.shape[0]
    if n_clusters == c:
        return [[i] for i in range(c)]
    if n_clusters == 1:
        return [list(range(c))]
    if kind == "confusion" and off_diag == 0:
        notes.append("The model makes no mistake on these examples: there is no confusion to "
                     "cluster, so every class is its own cluster.")
        return [[i] for i in range(c)]
    if kind == "covariance" and covariance is None:
        notes.append("Fewer than 2 examples: no prediction covariance to cluster, so every "
                     "class is its own cluster.")
        return [[i] for i in range(c)]
    if kind == "covariance" and not np.any(covariance[~np.eye(c, dtype=bool)] > 0):
        # The covariance affinity keeps only positive covariances: none means no signal.
        notes.append("No two classes have positively covarying predictions: nothing to "
                     "cluster, so every class is its own cluster.")
        return [[i] for i in range(c)]
    matrix = counts if kind == "confusion" else covariance
    return [sorted(int(i) for i in s) for s in
            cluster_classes(matrix, n_clusters, method=method, random_state=random_state,
                            kind=kind)]


# ---------------------------------------------------------------------------
# saved predictions


def save_predictions(path: str | os.PathLike, probs: Any, labels: Any,
                     class_names: list[str] | None = None) -> None:
    """Save predicted probabilities and true labels to an ``.npz``, atomically.

    Args:
        path: destination file (conventionally ``*.npz``; the name is kept as given).
        probs: (N, C) predicted probabilities (rows sum to 1).
        labels: (N,) true class indices.
        class_names: optional C names, stored as a fixed-width unicode array so
            that loading needs no pickle.
    """
    probs = _check_probs(probs)
    n, c = probs.shape
    labels = _check_labels(labels, "labels", c)
    if labels.shape[0] != n:
        raise ValueError(f"probs has {n} rows but labels has {labels.shape[0]} entries")
    arrays = {"probs": probs.astype(np.float32), "labels": labels}
    if class_names is not None:
        arrays["class_names"] = np.array(_check_class_names(class_names, c), dtype=np.str_)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # A file object, not a name: np.savez would append ".npz" to the temporary name.
        np.savez_compressed(f, **arrays)


def load_predictions(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Load predictions written by :func:`save_predictions` (or any ``.npz`` with the same keys).

    Returns:
        ``(probs, labels, class_names)``: (N, C) float, (N,) int64, and the C
        names or None when the file has none.

    Raises:
        FileNotFoundError: no such file.
        FormatError: not an ``.npz``, a key is missing, or the arrays are inconsistent.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise FormatError(f"{path}: expected an .npz archive, found a single .npy array")
        with z:
            missing = [k for k in ("probs", "labels") if k not in z.files]
            if missing:
                raise FormatError(f"{path}: missing array(s) {missing}; found {z.files}")
            probs = z["probs"]
            labels = z["labels"]
            names = z["class_names"].tolist() if "class_names" in z.files else None
    except FormatError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise FormatError(f"{path}: not a readable predictions .npz ({e})") from None
    try:
        probs = _check_probs(probs)
        labels = _check_labels(labels, "labels", probs.shape[1])
        if labels.shape[0] != probs.shape[0]:
            raise ValueError(f"probs has {probs.shape[0]} rows but labels has {labels.shape[0]}")
        if names is not None:
            names = _check_class_names(names, probs.shape[1])
    except ValueError as e:
        raise FormatError(f"{path}: {e}") from None
    return probs, labels, names
