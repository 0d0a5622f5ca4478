"""Cluster classes into confusable subsets, and pick the subsets that get specialists.

Two signals say which classes belong together (DESIGN.md sec. 3):

* ``kind="confusion"``: a (C, C) confusion matrix of counts (rows = true
  class, columns = predicted class) -- the labelled signal.
* ``kind="covariance"``: the (C, C) covariance of a model's predicted
  distributions over a data set -- the paper's label-free signal (Hinton,
  Vinyals & Dean 2015 clustered its columns with online k-means).

Both are turned into a symmetric, non-negative *affinity* with a zero diagonal
(see :func:`confusion_affinity` and :func:`covariance_affinity`), which
spectral and agglomerative clustering use directly; k-means clusters the
columns of a matrix (see :func:`cluster_classes`).
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans, SpectralClustering

METHODS = ("spectral", "agglomerative", "kmeans")
KINDS = ("confusion", "covariance")


def _as_square(matrix: object, name: str) -> np.ndarray:
    """Return ``matrix`` as a finite float64 (C, C) array or raise ValueError."""
    if hasattr(matrix, "detach"):  # a torch tensor
        matrix = matrix.detach().cpu().numpy()
    arr = np.asarray(matrix)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
    ):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{name} must be a 2-D square (C, C) matrix, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 classes)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite entries (NaN or inf)")
    return arr


def _check_confusion(confusion: object) -> np.ndarray:
    arr = _as_square(confusion, "confusion matrix")
    if np.any(arr < 0):
        i, j = np.argwhere(arr < 0)[0]
        raise ValueError(f"confusion matrix has a negative count {arr[i, j]} at ({i}, {j})")
    return arr


def _check_covariance(covariance: object) -> np.ndarray:
    arr = _as_square(covariance, "covariance matrix")
    scale = float(np.max(np.abs(arr))) if arr.size else 0.0
    if not np.allclose(arr, arr.T, rtol=1e-7, atol=1e-9 * scale):
        raise ValueError("covariance matrix is not symmetric")
    if np.any(np.diag(arr) < -1e-12 * scale):
        raise ValueError("covariance matrix has a negative variance on its diagonal")
    return (arr + arr.T) / 2  # exactly symmetric from here on


def confusion_rates(confusion: np.ndarray) -> np.ndarray:
    """Row-normalise a confusion matrix of counts: ``R[i, j] = P(predict j | true i)``.

    Rows without any example stay zero. Returns a (C, C) float64 array.
    """
    arr = _check_confusion(confusion)
    totals = arr.sum(axis=1, keepdims=True)
    return np.divide(arr, totals, out=np.zeros_like(arr), where=totals > 0)


def confusion_affinity(confusion: np.ndarray) -> np.ndarray:
    """Affinity between classes from a confusion matrix of counts.

    ``A = (P + P.T) / 2`` where ``P[i, j]`` (i != j) is the share of class i's
    *mistakes* that go to class j: the diagonal is removed *before* each row
    is normalised, so every row of P that has mistakes sums to 1.

    Why normalise by the mistakes rather than by all examples of the class:
    accuracy differs a lot between classes. Under error *rates* a class that
    is right 99% of the time has near-zero affinity with everything, even when
    all its few mistakes go to one partner, and it then looks like an outlier
    that clustering splits off on its own; frequent classes would dominate
    raw counts in the same way. Normalising by the mistakes says *where* each
    class's errors go, independent of how many there are and of the class's
    frequency, which is what makes the block structure stand out.

    Returns:
        (C, C) symmetric float64 array, zero diagonal, entries in [0, 1].
    """
    arr = _check_confusion(confusion)
    off = arr.copy()
    np.fill_diagonal(off, 0.0)
    errors = off.sum(axis=1, keepdims=True)
    p = np.divide(off, errors, out=np.zeros_like(off), where=errors > 0)
    return (p + p.T) / 2


def covariance_affinity(covariance: np.ndarray) -> np.ndarray:
    """Affinity between classes from the covariance of predicted distributions.

    The covariance is scaled to a correlation (so classes that are predicted
    often, and so vary more, do not dominate), the negative part is clipped
    to zero (classes that do *not* rise together are unrelated, not
    "anti-similar": spectral clustering needs non-negative weights) and the
    diagonal is removed. Classes that are never predicted (zero variance) have
    zero affinity.

    Returns:
        (C, C) symmetric float64 array, zero diagonal, entries in [0, 1].
    """
    arr = _check_covariance(covariance)
    std = np.sqrt(np.clip(np.diag(arr), 0.0, None))
    outer = np.outer(std, std)
    corr = np.divide(arr, outer, out=np.zeros_like(arr), where=outer > 0)
    aff = np.clip(corr, 0.0, 1.0)
    np.fill_diagonal(aff, 0.0)
    return aff


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")


def _affinity(matrix: object, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (validated matrix, affinity) for ``kind``."""
    _check_kind(kind)
    if kind == "confusion":
        arr = _check_confusion(matrix)
        return arr, confusion_affinity(arr)
    arr = _check_covariance(matrix)
    return arr, covariance_affinity(arr)


def subset_mass(
    matrix: object, subsets: Sequence[Sequence[int]], *, kind: str = "confusion"
) -> np.ndarray:
    """Confusion mass inside each subset: how much the subset's classes mix with each other.

    For ``kind="confusion"`` this is the sum of the off-diagonal entries of
    ``(R + R.T) / 2`` within the subset, with R the error *rates*
    (:func:`confusion_rates`): the summed rate at which members are mistaken
    for other members -- the errors a specialist on the subset could fix. For
    ``kind="covariance"`` it is the sum of the off-diagonal affinity
    (:func:`covariance_affinity`) within the subset.

    Returns:
        (M,) float64 array.
    """
    _check_kind(kind)
    if kind == "confusion":
        rates = confusion_rates(matrix)
        sym = (rates + rates.T) / 2
        np.fill_diagonal(sym, 0.0)
    else:
        sym = covariance_affinity(matrix)
    subsets = _check_partial_subsets(subsets, sym.shape[0])
    return np.array([float(sym[np.ix_(s, s)].sum()) for s in subsets], dtype=float)


def _rank(subsets: list[list[int]], mass: np.ndarray) -> list[int]:
    """Order of subsets: most mass first, ties by smallest class index, then size."""
    return sorted(range(len(subsets)), key=lambda k: (-mass[k], min(subsets[k]), len(subsets[k])))


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
        inner = affinity[np.ix_(members, members)].sum(axis=1)
        labels[members[int(np.argmin(inner))]] = k
        k += 1
    return labels


def _cluster_labels(matrix: np.ndarray, affinity: np.ndarray, n_clusters: int, method: str,
                    kind: str, random_state: int) -> np.ndarray:
    """Run the scikit-learn clusterer; returns (C,) labels (possibly with < n_clusters groups)."""
    n = matrix.shape[0]
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
        points = matrix.T  # the paper: k-means on the columns of the covariance
    else:
        # Columns of the normalised confusion, with each class's own entry set to its
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


def _check_count(value: object, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} is {value!r}, expected an int")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} is {value}, must be {bound}")
    return value


def cluster_classes(matrix: object, n_clusters: int, *, method: str = "spectral",
                    random_state: int = 0, kind: str = "confusion") -> list[list[int]]:
    """Partition the C classes into ``n_clusters`` groups of mutually confusable classes.

    Args:
        matrix: (C, C) confusion counts (``kind="confusion"``; rows = true class)
            or covariance of predicted distributions (``kind="covariance"``).
        n_clusters: number of groups, 1 <= n_clusters <= C.
        method: ``"spectral"`` (SpectralClustering on the affinity),
            ``"agglomerative"`` (average linkage on ``max(A) - A``) or
            ``"kmeans"`` (KMeans on the columns of the covariance, or of the
            normalised confusion affinity with a self-loop on the diagonal).
        random_state: seed for the clusterer.
        kind: ``"confusion"`` or ``"covariance"``.

    Returns:
        A partition: every class in exactly one subset, exactly ``n_clusters``
        non-empty subsets, class indices sorted inside each, subsets ordered by
        :func:`subset_mass` (largest first; ties by smallest class index).

    Raises:
        ValueError: bad shape, non-finite entries, negative counts, an
            asymmetric covariance, ``n_clusters`` out of range, a confusion
            matrix with no off-diagonal counts, unknown method or kind.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    arr, affinity = _affinity(matrix, kind)
    n = arr.shape[0]
    n_clusters = _check_count(n_clusters, "n_clusters", 1, n)
    if kind == "confusion" and not np.any(affinity > 0):
        raise ValueError("confusion matrix has no off-diagonal counts: no confusion to cluster")
    if n_clusters == 1:
        labels = np.zeros(n, dtype=int)
    elif n_clusters == n:
        labels = np.arange(n)
    else:
        labels = _cluster_labels(arr, affinity, n_clusters, method, kind, random_state)
        labels = _repair(np.asarray(labels), n_clusters, affinity)
    subsets = [np.flatnonzero(labels == k).tolist() for k in range(n_clusters)]
    mass = subset_mass(arr, subsets, kind=kind)
    return [subsets[k] for k in _rank(subsets, mass)]


class ClassClusterer:
    """Estimator wrapper around :func:`cluster_classes` (scikit-learn style).

    Args:
        n_clusters: number of class groups.
        method: ``"spectral"``, ``"agglomerative"`` or ``"kmeans"``.
        kind: ``"confusion"`` (counts) or ``"covariance"`` (of predicted distributions).
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
        """Cluster the classes of a (C, C) confusion or covariance matrix; returns self."""
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


def _check_partial_subsets(subsets: object, n: int) -> list[list[int]]:
    """Subsets for selection: ints in range, no repeats; any size (singletons allowed)."""
    if isinstance(subsets, str | bytes) or not isinstance(subsets, Sequence):
        raise ValueError(f"subsets is {type(subsets).__name__}, expected a list of lists")
    out = []
    for i, s in enumerate(subsets):
        if isinstance(s, str | bytes) or not isinstance(s, Sequence | np.ndarray):
            raise ValueError(f"subsets[{i}] is {type(s).__name__}, expected a list of classes")
        cls = []
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


def select_subsets(confusion: object, subsets: Sequence[Sequence[int]], *, min_size: int = 2,
                   max_size: int | None = None, max_subsets: int | None = None,
                   overlap: int = 0) -> list[list[int]]:
    """Choose which class subsets get a specialist, and adjust them.

    Confusion between classes is measured by ``S = (R + R.T) / 2`` with R the
    error rates (:func:`confusion_rates`). Rules, applied in this order:

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
    5. The rest are ranked by confusion mass inside (:func:`subset_mass`,
       largest first; ties by smallest class index) and cut to ``max_subsets``.

    Args:
        confusion: (C, C) confusion counts (rows = true class).
        subsets: candidate subsets, e.g. from :func:`cluster_classes`.
        min_size: smallest subset kept, >= 2.
        max_size: largest subset before overlap; None: no limit.
        max_subsets: most subsets returned; None: all.
        overlap: classes added to each subset from outside it, >= 0.

    Returns:
        Subsets with class indices sorted, ranked most-confused first.
    """
    rates = confusion_rates(confusion)
    n = rates.shape[0]
    sym = (rates + rates.T) / 2
    np.fill_diagonal(sym, 0.0)
    cands = _check_partial_subsets(subsets, n)
    min_size = _check_count(min_size, "min_size", 2)
    if max_size is not None:
        max_size = _check_count(max_size, "max_size", min_size)
    if max_subsets is not None:
        max_subsets = _check_count(max_subsets, "max_subsets", 1)
    overlap = _check_count(overlap, "overlap", 0)

    chosen: list[list[int]] = []
    for s in cands:
        if len(s) < min_size:
            continue
        s = sorted(s)
        if max_size is not None and len(s) > max_size:
            inner = sym[np.ix_(s, s)].sum(axis=1)
            order = sorted(range(len(s)), key=lambda k: (-inner[k], s[k]))
            s = sorted(s[k] for k in order[:max_size])
        room = min(overlap, n - 1 - len(s))
        if room > 0:
            outside = np.setdiff1d(np.arange(n), s)
            pull = sym[np.ix_(outside, s)].sum(axis=1)
            order = sorted(range(len(outside)), key=lambda k: (-pull[k], outside[k]))
            extra = [int(outside[k]) for k in order[:room] if pull[k] > 0]
            s = sorted(s + extra)
        if len(s) >= n or s in chosen:
            continue
        chosen.append(s)
    if not chosen:
        return []
    mass = subset_mass(confusion, chosen, kind="confusion")
    ranked = [chosen[k] for k in _rank(chosen, mass)]
    return ranked if max_subsets is None else ranked[:max_subsets]
