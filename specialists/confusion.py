"""The confusion analysis: everything the confusion report shows, in one serialisable bundle.

:func:`analyse` turns predicted probabilities and true labels into a :class:`ConfusionAnalysis`:
counts and rates (:mod:`specialists.counts`), the prediction covariance, the class affinity the
clusters are built from (:mod:`specialists.affinity`) and the clusters themselves
(:mod:`specialists.clustering`). :func:`analyse_counts` does the same from a confusion matrix
alone. The report (:mod:`specialists.report`) draws it.

Many classes: above ``SPARSE_MIN_CLASSES`` classes (or with ``sparse=True``) the counts, rates and
covariance are ``scipy.sparse`` matrices and no (C, C) array is built: at the paper's 15,000
classes one would take 1.8 GB. A sparse confusion matrix passed to :func:`analyse_counts` is kept
sparse too.

The counting functions and the saved-predictions helpers are re-exported here, where they lived
before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from .affinity import class_affinity, confusion_rates, prediction_covariance
from .checks import (
    check_class_names,
    check_confusion,
    check_covariance,
    check_labels,
    check_n_classes,
    check_probs,
)
from .clustering import cluster_classes
from .counts import cluster_mass, confusion_matrix, most_confused_pairs
from .predictions import load_predictions, save_predictions
from .selection import MIN_PAIR_COUNT, check_signal
from .sparse import compact, is_sparse, without_diagonal

__all__ = [
    "COVARIANCE_TOP_K",
    "ConfusionAnalysis",
    "SPARSE_MIN_CLASSES",
    "analyse",
    "analyse_counts",
    "cluster_mass",
    "confusion_matrix",
    "default_n_clusters",
    "load_predictions",
    "most_confused_pairs",
    "prediction_covariance",
    "save_predictions",
]


# Above this many classes analyse() keeps its (C, C) matrices sparse. A dense one of 2,000 classes
# takes 32 MB, and the report holds three; at 15,000 classes each would take 1.8 GB.
SPARSE_MIN_CLASSES = 2000
# The sparse prediction covariance keeps each example's this many most probable classes
# (prediction_covariance(top_k=)): confusable groups of the paper's JFT run had up to 300 classes,
# but one example spreads its probability over a handful.
COVARIANCE_TOP_K = 10


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
        counts: (C, C) int64 confusion counts, rows = true class; a ``scipy.sparse.csr_array``
            for many classes (see the module docstring), as are ``normalised`` and
            ``covariance`` then.
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
    def sparse(self) -> bool:
        """Whether the (C, C) matrices are ``scipy.sparse``."""
        return is_sparse(self.counts)

    @property
    def affinity(self) -> np.ndarray:
        """(C, C) the class affinity the clusters were built from (:func:`class_affinity`)."""
        if self.kind == "covariance" and self.covariance is not None:
            return class_affinity(self.covariance, "covariance")
        return class_affinity(self.counts, "confusion")

    def to_dict(self) -> dict:
        """JSON-ready copy: arrays become nested lists, NaN becomes None. Sparse matrices become
        ``{"shape", "row", "col", "data"}`` (their stored entries); ``normalised`` is then None
        (:meth:`from_dict` computes it from the counts)."""
        sparse = self.sparse

        def matrix(m: Any, dtype: type) -> Any:
            return _triplets(m) if sparse else np.asarray(m).astype(dtype).tolist()

        return {
            "class_names": list(self.class_names),
            "n": int(self.n),
            "accuracy": float(self.accuracy),
            "per_class_accuracy": [None if np.isnan(a) else float(a)
                                   for a in self.per_class_accuracy],
            "counts": matrix(self.counts, np.int64),
            "normalised": None if sparse else matrix(self.normalised, np.float64),
            "pairs": [dict(p) for p in self.pairs],
            "pairs_symmetric": [dict(p) for p in self.pairs_symmetric],
            "covariance": None if self.covariance is None
            else matrix(self.covariance, np.float64),
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
            counts = _matrix(d["counts"], np.int64)
            return cls(
                class_names=[str(s) for s in d["class_names"]],
                counts=counts,
                normalised=confusion_rates(counts) if d["normalised"] is None
                else np.asarray(d["normalised"], dtype=np.float64),
                per_class_accuracy=np.array(
                    [np.nan if a is None else a for a in d["per_class_accuracy"]],
                    dtype=np.float64),
                accuracy=float(d["accuracy"]),
                pairs=[dict(p) for p in d["pairs"]],
                pairs_symmetric=[dict(p) for p in d["pairs_symmetric"]],
                covariance=None if d.get("covariance") is None
                else _matrix(d["covariance"], np.float64),
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
    sparse: bool | None = None,
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
            "agglomerative" or "kmeans"; spectral only when sparse).
        top: how many confused pairs to list.
        kind: what to cluster: ``"confusion"`` (the labelled confusion counts) or
            ``"covariance"`` (the label-free prediction covariance).
        random_state: seed for the clustering.
        min_pair_count: when the most confused pair has fewer confusions than this, ``notes``
            says that the signal is too weak to choose specialist subsets
            (:func:`specialists.selection.check_signal`; ``choose_subsets`` then returns none).
        sparse: keep the (C, C) matrices sparse; default: when C > ``SPARSE_MIN_CLASSES``. The
            covariance is then computed only for ``kind="covariance"``, from each example's
            ``COVARIANCE_TOP_K`` most probable classes (:func:`prediction_covariance`).

    Returns:
        A :class:`ConfusionAnalysis`. When the model makes no mistake there is
        nothing to cluster: the clusters are singletons and ``notes`` says so.
    """
    probs = check_probs(probs)  # (N, C)
    n, c = probs.shape
    y = check_labels(y, "y", c)
    if y.shape[0] != n:
        raise ValueError(f"probs has {n} rows but y has {y.shape[0]} labels")
    _check_kind(kind)
    if sparse is None:
        sparse = c > SPARSE_MIN_CLASSES
    counts = confusion_matrix(y, probs.argmax(axis=1), c, sparse=bool(sparse))  # (C, C)
    covariance = None
    if n >= 2 and not sparse:
        covariance = prediction_covariance(probs)
    elif n >= 2 and kind == "covariance":
        covariance = prediction_covariance(probs, top_k=COVARIANCE_TOP_K)
    return analyse_counts(counts, covariance=covariance, class_names=class_names,
                          n_clusters=n_clusters, method=method, top=top, kind=kind,
                          random_state=random_state, min_pair_count=min_pair_count)


def analyse_counts(
    counts: Any,
    *,
    covariance: Any = None,
    class_names: list[str] | None = None,
    n_clusters: int | None = None,
    method: str = "spectral",
    top: int = 10,
    kind: str = "confusion",
    random_state: int = 0,
    min_pair_count: float = MIN_PAIR_COUNT,
) -> ConfusionAnalysis:
    """:func:`analyse` from a confusion matrix: for data whose predicted probabilities are not
    at hand, or too many to hold (the paper's 15,000 classes).

    Args:
        counts: (C, C) whole, non-negative confusion counts, rows = true class; a
            ``scipy.sparse`` matrix stays sparse, and so does the whole analysis.
        covariance: (C, C) prediction covariance (:func:`prediction_covariance`), or None;
            needed for ``kind="covariance"``.
        class_names, n_clusters, method, top, kind, random_state, min_pair_count: as for
            :func:`analyse`.

    Returns:
        A :class:`ConfusionAnalysis` over the ``counts.sum()`` examples counted.
    """
    counts = check_confusion(counts, "counts")
    values = counts.data if is_sparse(counts) else counts
    if not np.all(values == np.round(values)):
        raise ValueError("counts must be whole numbers of examples; expected (fractional) "
                         "confusions go to choose_subsets, not to the report")
    counts = compact(counts.astype(np.int64)) if is_sparse(counts) else counts.astype(np.int64)
    c = counts.shape[0]
    n = int(counts.sum())
    if n == 0:
        raise ValueError("counts has no example (all zero): nothing to analyse")
    names = check_class_names(class_names, c)
    _check_kind(kind)
    if covariance is not None:
        covariance = check_covariance(covariance)
        if covariance.shape != counts.shape:
            raise ValueError(f"covariance has shape {covariance.shape} but counts {counts.shape}")
    if n_clusters is None:
        n_clusters = default_n_clusters(c)
    elif (isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer))
          or not 1 <= n_clusters <= c):
        raise ValueError(f"n_clusters must be an int in [1, {c}] (C = {c}), got {n_clusters!r}")
    n_clusters = int(n_clusters)

    rows = np.asarray(counts.sum(axis=1)).ravel()  # (C,)
    correct = np.asarray(counts.diagonal()).astype(np.float64)  # (C,)
    per_class = np.full(c, np.nan)
    np.divide(correct, rows, out=per_class, where=rows > 0)

    notes: list[str] = []
    absent = [names[i] for i in np.flatnonzero(rows == 0)]
    if absent:
        notes.append(f"{len(absent)} class(es) have no example: {', '.join(absent[:10])}"
                     + (" ..." if len(absent) > 10 else ""))
    off_diag = n - correct.sum()
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
        accuracy=float(correct.sum() / n),
        pairs=most_confused_pairs(counts, top),
        pairs_symmetric=most_confused_pairs(counts, top, symmetric=True),
        covariance=covariance,
        clusters=clusters,
        cluster_mass=cluster_mass(counts, clusters),
        n=n,
        method=method,
        notes=notes,
        kind=kind,
    )


def _check_kind(kind: str) -> None:
    if kind not in ("confusion", "covariance"):
        raise ValueError(f"kind must be 'confusion' or 'covariance', got {kind!r}")


def _clusters(counts: Any, covariance: Any, n_clusters: int, method: str, kind: str,
              random_state: int, off_diag: float, notes: list[str]) -> list[list[int]]:
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
    if kind == "covariance" and not _any_positive_off_diagonal(covariance):
        # The covariance affinity keeps only positive covariances: none means no signal.
        notes.append("No two classes have positively covarying predictions: nothing to "
                     "cluster, so every class is its own cluster.")
        return [[i] for i in range(c)]
    matrix = counts if kind == "confusion" else covariance
    return [sorted(int(i) for i in s) for s in
            cluster_classes(matrix, n_clusters, method=method, random_state=random_state,
                            kind=kind)]


def _any_positive_off_diagonal(m: Any) -> bool:
    if is_sparse(m):
        return bool(np.any(without_diagonal(m).data > 0))
    return bool(np.any(m[~np.eye(m.shape[0], dtype=bool)] > 0))


# ---------------------------------------------------------------------------
# sparse matrices in report.json


def _triplets(m: Any) -> dict:
    """A sparse (C, C) matrix as JSON: its shape and stored entries, row-major."""
    coo = sp.coo_array(compact(m))
    return {"shape": [int(v) for v in coo.shape], "row": coo.row.astype(np.int64).tolist(),
            "col": coo.col.astype(np.int64).tolist(), "data": coo.data.tolist()}


def _matrix(value: Any, dtype: type) -> Any:
    """A matrix from :meth:`ConfusionAnalysis.to_dict`: nested lists (dense) or triplets
    (sparse), checked: a saved report may come from anyone."""
    if not isinstance(value, dict):
        return np.asarray(value, dtype=dtype)
    try:
        shape = tuple(int(v) for v in value["shape"])
        row, col = (np.asarray(value[k], dtype=np.int64) for k in ("row", "col"))
        data = np.asarray(value["data"], dtype=dtype)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"a sparse matrix in the analysis is malformed: {e}") from None
    if len(shape) != 2 or row.ndim != 1 or not row.shape == col.shape == data.shape:
        raise ValueError("a sparse matrix in the analysis needs a 2-d shape and row, col and "
                         "data lists of one length")
    if row.size and (min(row.min(), col.min()) < 0 or row.max() >= shape[0]
                     or col.max() >= shape[1]):
        raise ValueError(f"a sparse matrix in the analysis has an index outside its shape {shape}")
    return compact(sp.coo_array((data, (row, col)), shape=shape))
