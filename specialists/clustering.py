"""Cluster classes into confusable groups, and adjust groups into specialist subsets.

The building blocks of :func:`specialists.selection.choose_subsets`:

* :func:`cluster_classes` (and its estimator :class:`ClassClusterer`) partitions the classes by
  their affinity (:func:`specialists.affinity.class_affinity`, from confusion counts, from the
  covariance of predicted distributions, or given): spectral and agglomerative clustering use the
  affinity directly, k-means clusters columns (see :func:`cluster_classes`).
* :func:`select_subsets` drops, trims, extends (overlap) and ranks candidate subsets.

Both accept a ``scipy.sparse`` matrix and then build no dense (C, C) array: clustering is then
spectral only (:mod:`specialists.spectral`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans, SpectralClustering

from .affinity import KINDS, check_kind, class_affinity, subset_mass
from .checks import check_class_lists, check_count, check_covariance
from .sparse import block_row_sums, block_sum, is_sparse
from .spectral import sparse_spectral_labels

__all__ = ["KINDS", "METHODS", "ClassClusterer", "adjust_subsets", "cluster_classes", "partition",
           "select_subsets"]

METHODS = ("spectral", "agglomerative", "kmeans")


def _rank(subsets: list[list[int]], affinity: np.ndarray) -> list[list[int]]:
    """Subsets by affinity inside (:func:`subset_mass`), largest first; ties by smallest class
    index, then size."""
    mass = [block_sum(affinity, s, s) for s in subsets]
    order = sorted(range(len(subsets)), key=lambda k: (-mass[k], min(subsets[k]), len(subsets[k])))
    return [subsets[k] for k in order]


def _repair(labels: np.ndarray, n_clusters: int, affinity: np.ndarray) -> np.ndarray:
    """Make ``labels`` a partition into exactly ``n_clusters`` non-empty groups.

    A clusterer may return fewer groups (k-means on duplicate points, a
    degenerate spectral embedding). Split the largest group by moving out its
    member with the least affinity to the rest of the group until the count is
    right. Deterministic: ties go to the larger group label / smaller class.
    """
    _, labels = np.unique(labels, return_inverse=True)  # relabel 0..k-1
    k = int(labels.max()) + 1
    while k < n_clusters:
        sizes = np.bincount(labels, minlength=k)
        big = int(np.argmax(sizes))  # size >= 2 because n_clusters <= C
        members = np.flatnonzero(labels == big)
        inner = block_row_sums(affinity, members, members)
        labels[members[int(np.argmin(inner))]] = k
        k += 1
    return labels


def _cluster_labels(matrix: object, affinity: np.ndarray, n_clusters: int, method: str,
                    kind: str, random_state: int) -> np.ndarray:
    """Run the scikit-learn clusterer; returns (C,) labels (possibly with < n_clusters groups)."""
    n = affinity.shape[0]
    if is_sparse(affinity):
        if method != "spectral":
            raise ValueError(f"method {method!r} needs a dense (C, C) matrix; a sparse one is "
                             "clustered with method='spectral'")
        return sparse_spectral_labels(affinity, n_clusters, random_state)
    if method == "spectral":
        # A tiny uniform weight connects a disconnected affinity graph (otherwise the
        # embedding is ill-defined); it is far below any real affinity and so does not
        # move clusters that the data separate.
        top = float(affinity.max())
        weights = affinity + 1e-6 * top * (1.0 - np.eye(n))
        model = SpectralClustering(
            n_clusters=n_clusters, affinity="precomputed", random_state=random_state,
            assign_labels="cluster_qr",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "graph is not fully connected"
            return model.fit_predict(weights)
    if method == "agglomerative":
        # Distance = how much weaker than the strongest affinity; average linkage then
        # merges groups by their mean affinity (the order is invariant to the scale).
        distance = float(affinity.max()) - affinity
        np.fill_diagonal(distance, 0.0)
        model = AgglomerativeClustering(
            n_clusters=n_clusters, metric="precomputed", linkage="average"
        )
        return model.fit_predict(distance)
    if kind == "covariance":
        points = check_covariance(matrix).T  # the paper: k-means on the covariance's columns
    else:
        # Columns of the affinity, with each class's own entry set to its
        # strongest affinity (a self-loop): with the diagonal left at the accuracy (or at
        # zero) it dominates the distance between columns and hides the groups, whereas
        # this way the columns of a clean block become nearly identical. A class confused
        # with nothing gets the overall maximum: an island of its own, not a zero column
        # that k-means would lump with every other such class.
        points = affinity.copy()
        loop = affinity.max(axis=1)
        np.fill_diagonal(points, np.where(loop > 0, loop, affinity.max()))
        points = points.T
    model = KMeans(n_clusters=n_clusters, n_init=10, random_state=random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "found fewer distinct clusters": _repair fixes it
        return model.fit_predict(points)


def cluster_classes(matrix: object, n_clusters: int, *, method: str = "spectral",
                    random_state: int = 0, kind: str = "confusion") -> list[list[int]]:
    """Partition the C classes into ``n_clusters`` groups of mutually confusable classes.

    Args:
        matrix: (C, C) confusion counts (``kind="confusion"``; rows = true class),
            covariance of predicted distributions (``kind="covariance"``) or a class affinity
            (``kind="affinity"``); see :func:`specialists.affinity.class_affinity`.
        n_clusters: number of groups, 1 <= n_clusters <= C.
        method: ``"spectral"`` (SpectralClustering on the affinity),
            ``"agglomerative"`` (average linkage on ``max(A) - A``) or
            ``"kmeans"`` (KMeans on the columns of the covariance, or of the
            affinity with a self-loop on the diagonal). A sparse ``matrix`` takes
            ``"spectral"`` only (:func:`specialists.spectral.sparse_spectral_labels`).
        random_state: seed for the clusterer.
        kind: ``"confusion"``, ``"covariance"`` or ``"affinity"``.

    Returns:
        A partition: every class in exactly one subset, exactly ``n_clusters``
        non-empty subsets, class indices sorted inside each, subsets ordered by
        affinity inside (:func:`specialists.affinity.subset_mass`; largest first, ties by
        smallest class index).

    Raises:
        ValueError: bad shape, non-finite entries, negative counts, an
            asymmetric covariance, ``n_clusters`` out of range, a confusion
            matrix with no off-diagonal counts, unknown method or kind.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    affinity = class_affinity(matrix, check_kind(kind))
    n = affinity.shape[0]
    n_clusters = check_count(n_clusters, "n_clusters", 1, n)
    confused = affinity.nnz > 0 if is_sparse(affinity) else np.any(affinity > 0)
    if kind == "confusion" and not confused:
        raise ValueError("confusion matrix has no off-diagonal counts: no confusion to cluster")
    return partition(affinity, n_clusters, method=method, random_state=random_state,
                     matrix=matrix, kind=kind)


def partition(affinity: object, n_clusters: int, *, method: str = "spectral",
              random_state: int = 0, matrix: object = None,
              kind: str = "affinity") -> list[list[int]]:
    """:func:`cluster_classes` on an affinity checked already (what ``class_affinity`` returns:
    symmetric, non-negative, zero diagonal), ``1 <= n_clusters <= C``: no check, no copy.

    ``matrix`` and ``kind`` are needed only by ``method="kmeans"`` on a covariance.
    """
    n = affinity.shape[0]
    if n_clusters == 1:
        labels = np.zeros(n, dtype=int)
    elif n_clusters == n:
        labels = np.arange(n)
    else:
        labels = _cluster_labels(matrix, affinity, n_clusters, method, kind, random_state)
        labels = _repair(np.asarray(labels), n_clusters, affinity)
    return _rank([np.flatnonzero(labels == k).tolist() for k in range(n_clusters)], affinity)


class ClassClusterer:
    """Estimator wrapper around :func:`cluster_classes` (scikit-learn style).

    Args:
        n_clusters: number of class groups.
        method: ``"spectral"``, ``"agglomerative"`` or ``"kmeans"``.
        kind: ``"confusion"`` (counts), ``"covariance"`` (of predicted distributions) or
            ``"affinity"`` (computed already).
        random_state: seed for the clusterer.

    Attributes:
        subsets_: list[list[int]], the partition, most confused subset first.
        labels_: (C,) int array, the index in ``subsets_`` of each class.
        within_mass_: (n_clusters,) float array, :func:`subset_mass` of each subset.
    """

    def __init__(self, n_clusters: int = 8, *, method: str = "spectral", kind: str = "confusion",
                 random_state: int = 0) -> None:
        self.n_clusters = n_clusters
        self.method = method
        self.kind = kind
        self.random_state = random_state

    def fit(self, matrix: object) -> ClassClusterer:
        """Cluster the classes of a (C, C) confusion, covariance or affinity matrix; returns self."""
        self.subsets_ = cluster_classes(
            matrix, self.n_clusters, method=self.method, random_state=self.random_state,
            kind=self.kind,
        )
        n = sum(len(s) for s in self.subsets_)
        self.labels_ = np.empty(n, dtype=int)
        for k, s in enumerate(self.subsets_):
            self.labels_[s] = k
        self.within_mass_ = subset_mass(matrix, self.subsets_, kind=self.kind)
        return self

    def fit_predict(self, matrix: object) -> np.ndarray:
        """Fit and return ``labels_`` ((C,) int array)."""
        return self.fit(matrix).labels_


def select_subsets(confusion: object, subsets: Sequence[Sequence[int]], *, min_size: int = 2,
                   max_size: int | None = None, max_subsets: int | None = None,
                   overlap: int = 0, kind: str = "confusion") -> list[list[int]]:
    """Choose which class subsets get a specialist, and adjust them.

    Confusion between classes is measured by the class affinity ``S``
    (:func:`specialists.affinity.class_affinity`; for counts, the symmetrised error
    rates). Rules, applied in this order:

    1. Subsets with fewer than ``min_size`` classes are dropped.
    2. A subset with more than ``max_size`` classes keeps the ``max_size``
       classes with the largest confusion with the rest of the subset
       (``sum_{j in subset, j != i} S[i, j]``, computed once on the whole
       subset; ties keep the smaller class index).
    3. ``overlap=k`` adds to each subset the (up to) k classes outside it with
       the largest confusion with it (``sum_{j in subset} S[i, j]``; ties to
       the smaller index). Classes with no confusion with it are never added,
       and additions stop one short of covering every class, so the dustbin
       is never empty. Added classes come on top of ``max_size``. With
       overlap a class may be covered by several specialists, as in the paper.
    4. A subset that covers every class (no dustbin) is dropped, and so is a
       repeat of an earlier subset.
    5. The rest are ranked by affinity inside (:func:`subset_mass`,
       largest first; ties by smallest class index) and cut to ``max_subsets``.

    Args:
        confusion: (C, C) confusion counts (rows = true class), or the matrix ``kind`` names.
        subsets: candidate subsets, e.g. from :func:`cluster_classes`.
        min_size: smallest subset kept, >= 2.
        max_size: largest subset before overlap; None: no limit.
        max_subsets: most subsets returned; None: all.
        overlap: classes added to each subset from outside it, >= 0.
        kind: what ``confusion`` holds, as for :func:`cluster_classes`.

    Returns:
        Subsets with class indices sorted, ranked most-confused first.
    """
    sym = class_affinity(confusion, kind)
    n = sym.shape[0]
    cands = check_class_lists(subsets, n)
    min_size = check_count(min_size, "min_size", 2)
    if max_size is not None:
        max_size = check_count(max_size, "max_size", min_size)
    if max_subsets is not None:
        max_subsets = check_count(max_subsets, "max_subsets", 1)
    overlap = check_count(overlap, "overlap", 0)
    return adjust_subsets(sym, cands, min_size=min_size, max_size=max_size,
                          max_subsets=max_subsets, overlap=overlap)


def adjust_subsets(sym: object, subsets: list[list[int]], *, min_size: int = 2,
                   max_size: int | None = None, max_subsets: int | None = None,
                   overlap: int = 0) -> list[list[int]]:
    """:func:`select_subsets` on an affinity and options checked already: no check, no copy."""
    n = sym.shape[0]
    chosen: list[list[int]] = []
    for s in subsets:
        if len(s) < min_size:
            continue
        s = sorted(s)
        if max_size is not None and len(s) > max_size:
            inner = block_row_sums(sym, s, s)
            order = sorted(range(len(s)), key=lambda k: (-inner[k], s[k]))
            s = sorted(s[k] for k in order[:max_size])
        room = min(overlap, n - 1 - len(s))
        if room > 0:
            outside = np.setdiff1d(np.arange(n), s)
            pull = block_row_sums(sym, outside, s)
            order = sorted(range(len(outside)), key=lambda k: (-pull[k], outside[k]))
            extra = [int(outside[k]) for k in order[:room] if pull[k] > 0]
            s = sorted(s + extra)
        if len(s) >= n or s in chosen:
            continue
        chosen.append(s)
    ranked = _rank(chosen, sym)
    return ranked if max_subsets is None else ranked[:max_subsets]
