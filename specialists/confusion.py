"""The confusion analysis: everything the confusion report shows, in one serialisable bundle.

:func:`analyse` turns predicted probabilities and true labels into a :class:`ConfusionAnalysis`:
counts and rates (:mod:`specialists.counts`), the prediction covariance, the class affinity the
clusters are built from (:mod:`specialists.affinity`) and the clusters themselves
(:mod:`specialists.clustering`). The report (:mod:`specialists.report`) draws it.

The counting functions and the saved-predictions helpers are re-exported here, where they lived
before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .affinity import class_affinity, confusion_rates, prediction_covariance
from .checks import check_class_names, check_labels, check_n_classes, check_probs
from .clustering import cluster_classes
from .counts import cluster_mass, confusion_matrix, most_confused_pairs
from .predictions import load_predictions, save_predictions
from .selection import MIN_PAIR_COUNT, check_signal

__all__ = [
    "ConfusionAnalysis",
    "analyse",
    "cluster_mass",
    "confusion_matrix",
    "default_n_clusters",
    "load_predictions",
    "most_confused_pairs",
    "prediction_covariance",
    "save_predictions",
]


def default_n_clusters(n_classes: int) -> int:
    """The number of clusters :func:`analyse` uses when none is given.

    ``round(sqrt(C))`` clipped to ``[2, C - 1]``: clusters of about sqrt(C)
    classes each, and never the trivial all-in-one or all-singletons split.
    For C <= 2 no non-trivial split exists; the answer is 1.
    """
    c = check_n_classes(n_classes)
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
        kind: the signal the clusters were built from, ``"confusion"`` or ``"covariance"``.
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
    kind: str = "confusion"

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def affinity(self) -> np.ndarray:
        """(C, C) the class affinity the clusters were built from (:func:`class_affinity`)."""
        if self.kind == "covariance" and self.covariance is not None:
            return class_affinity(self.covariance, "covariance")
        return class_affinity(self.counts, "confusion")

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
            "kind": self.kind,
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
                kind=str(d.get("kind", "confusion")),
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
    min_pair_count: float = MIN_PAIR_COUNT,
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
        min_pair_count: when the most confused pair has fewer confusions than this, ``notes``
            says that the signal is too weak to choose specialist subsets
            (:func:`specialists.selection.check_signal`; ``choose_subsets`` then returns none).

    Returns:
        A :class:`ConfusionAnalysis`. When the model makes no mistake there is
        nothing to cluster: the clusters are singletons and ``notes`` says so.
    """
    probs = check_probs(probs)  # (N, C)
    n, c = probs.shape
    y = check_labels(y, "y", c)
    if y.shape[0] != n:
        raise ValueError(f"probs has {n} rows but y has {y.shape[0]} labels")
    names = check_class_names(class_names, c)
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
    signal = check_signal(counts, min_pair_count=min_pair_count, class_names=names)
    if off_diag > 0 and signal.too_weak:
        notes.append(signal.reason[0].upper() + signal.reason[1:]
                     + ": no specialist is trained on these clusters.")
    clusters = _clusters(counts, covariance, n_clusters, method, kind, random_state, off_diag,
                         notes)

    return ConfusionAnalysis(
        class_names=names,
        counts=counts,
        normalised=confusion_rates(counts),
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
        kind=kind,
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
