"""Choose the class subsets that get a specialist, from where the generalist is confused.

:func:`choose_subsets` is the one function that ``run`` and ``train-specialists`` call. Its rules:

* **Enough signal.** When the confusion counts are too few to say which classes are confusable
  (:func:`check_signal`), it returns no subset: better no specialist than specialists for noise.
* **Rarely confused classes stay out.** A class joins a subset only if its strongest affinity to
  another class reaches ``min_affinity`` times the strongest affinity of any pair. It needs no
  specialist, and the dustbin is where it belongs.
* **Strongly confused pairs share a subset.** Every pair whose affinity reaches ``strong_affinity``
  times the strongest is put in one subset together, adding a class to a subset if clustering
  split the pair (the subsets may then overlap, as the paper's did).

Affinity is :func:`specialists.affinity.class_affinity` (for confusion counts, the symmetrised
error rate), the same measure the clustering and the confusion report use.

At the paper's scale (15,000 classes) pass the counts as a ``scipy.sparse`` matrix: every step
then stays sparse (:mod:`specialists.sparse`), and the rules and thresholds mean the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from .affinity import check_kind, class_affinity
from .checks import check_confusion, check_count
from .clustering import METHODS, adjust_subsets, partition
from .sparse import (
    block_sum,
    compact,
    is_sparse,
    row_max,
    row_top_k,
    submatrix,
    upper_pairs,
    zero_outside,
)

__all__ = ["MIN_AFFINITY", "MIN_PAIR_COUNT", "STRONG_AFFINITY", "SignalCheck", "check_signal",
           "choose_subsets"]

MIN_AFFINITY = 0.15  # a class whose strongest affinity is below this share of the top pair's: out
STRONG_AFFINITY = 0.5  # pairs at or above this share of the top pair's affinity share a subset
MIN_PAIR_COUNT = 10  # confusions of the most confused pair below which the signal is too weak
EXPECTED_TOP_K = 10  # many classes: the expected confusion keeps each example's top 10 classes


@dataclass(frozen=True)
class SignalCheck:
    """Whether confusion counts carry enough signal to choose subsets, and why.

    Attributes:
        too_weak: True when no subset should be chosen.
        reason: one line for a log or the report, saying what was found and what is needed.
        n_examples: examples counted (sum of the matrix).
        n_confusions: off-diagonal counts.
        top_pair: the pair (a, b), a < b, with the most confusions in both directions, or None.
        top_pair_count: its confusions, ``cm[a, b] + cm[b, a]``.
    """

    too_weak: bool
    reason: str
    n_examples: float
    n_confusions: float
    top_pair: tuple[int, int] | None
    top_pair_count: float


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.3g}"


def check_signal(confusion: Any, *, min_pair_count: float = MIN_PAIR_COUNT,
                 class_names: list[str] | None = None) -> SignalCheck:
    """Say whether confusion counts are enough to choose specialist subsets.

    Rule: the signal is too weak when the most confused pair of classes (confusions in both
    directions together) has fewer than ``min_pair_count`` confusions. A pair's count is roughly
    Poisson, with relative standard error ``1 / sqrt(n)``: over 30% below 10, so which pairs are
    the most confused, and which classes are rarely confused next to them, would be read from
    noise. Expected (fractional) counts, e.g. summed predicted probabilities, are judged the same
    way.

    Args:
        confusion: (C, C) confusion counts, rows = true class.
        min_pair_count: confusions the most confused pair needs, > 0.
        class_names: C names for the message (default: class indices).

    Returns:
        A :class:`SignalCheck`.
    """
    cm = check_confusion(confusion)
    if isinstance(min_pair_count, bool) or not (
        isinstance(min_pair_count, int | float) and min_pair_count > 0
    ):
        raise ValueError(f"min_pair_count must be a number > 0, got {min_pair_count!r}")
    c = cm.shape[0]
    names = class_names if class_names is not None else [str(i) for i in range(c)]
    trace = cm.diagonal().sum() if is_sparse(cm) else np.trace(cm)
    n, errors = float(cm.sum()), float(cm.sum() - trace)
    if errors == 0 or c < 2:
        return SignalCheck(True, f"no confusion among {_fmt(n)} examples: no class needs a "
                           "specialist", n, errors, None, 0.0)
    (a, b), top = _top_pair(cm)

    pair = f"{names[a]} <-> {names[b]}"
    if top < min_pair_count:
        reason = (f"too little confusion to choose specialist subsets: the most confused pair "
                  f"({pair}) has {_fmt(top)} confusion(s) among {_fmt(n)} examples "
                  f"({_fmt(errors)} in all); at least {_fmt(min_pair_count)} are needed")
        return SignalCheck(True, reason, n, errors, (a, b), top)
    reason = (f"enough confusion to choose specialist subsets: the most confused pair ({pair}) "
              f"has {_fmt(top)} confusions among {_fmt(n)} examples")
    return SignalCheck(False, reason, n, errors, (a, b), top)


def _top_pair(cm: Any) -> tuple[tuple[int, int], float]:
    """The pair a < b with the most confusions in both directions (the first in row-major order
    on ties), and that count."""
    if is_sparse(cm):
        both = sp.triu(cm + cm.T, k=1, format="coo")  # (C, C) confusions of each pair a < b
        best = np.flatnonzero(both.data == both.data.max())
        k = best[np.lexsort((both.col[best], both.row[best]))][0]
        return (int(both.row[k]), int(both.col[k])), float(both.data[k])
    both = np.triu(cm + cm.T, k=1)
    a, b = (int(i) for i in np.unravel_index(int(np.argmax(both)), both.shape))
    return (a, b), float(both[a, b])


def _share(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def _groups(among: Any, edges: Any, keep: np.ndarray, n_clusters: int | None,
            method: str, max_size: int | None, random_state: int) -> list[list[int]]:
    """Partition the kept classes: the connected components of ``edges`` (C, C) bool, each split
    to ``max_size``, or ``n_clusters`` clusters; clustering reads the affinity ``among``."""
    sub = submatrix(among, keep, keep)  # (K, K)
    if n_clusters is not None:
        k = min(n_clusters, len(keep))
        parts = partition(sub, k, method=method, random_state=random_state)
    else:
        n_comp, labels = connected_components(submatrix(edges, keep, keep), directed=False)
        parts = []
        for g in range(n_comp):
            members = np.flatnonzero(labels == g).tolist()
            if max_size is not None and len(members) > max_size:
                k = math.ceil(len(members) / max_size)
                block = submatrix(sub, members, members)
                parts += [[members[i] for i in s] for s in partition(
                    block, k, method=method, random_state=random_state)]
            else:
                parts.append(members)
    return [[int(keep[i]) for i in s] for s in parts]


def _join_strong_pairs(subsets: list[list[int]], aff: Any, strong: float,
                       n: int) -> list[list[int]]:
    """Make every pair with affinity >= ``strong`` share a subset, adding the class that fits
    best (largest affinity to the subset it joins; ties to the smaller subset)."""
    out = [list(s) for s in subsets]
    pairs = [(int(i), int(j)) for i, j in upper_pairs(aff, strong)]
    strength = {p: float(aff[p]) for p in pairs}
    order = sorted(pairs, key=lambda p: (-strength[p], p))  # strongest first
    for i, j in order:
        if any(i in s and j in s for s in out):
            continue
        options = [(_pull(aff, new, s), -len(s), -k, k, new)
                   for k, s in enumerate(out) for old, new in ((i, j), (j, i))
                   if old in s and len(s) + 1 < n]
        if options:
            *_, k, new = max(options)
            out[k] = sorted(out[k] + [int(new)])
        elif n > 2:
            out.append(sorted([int(i), int(j)]))
    return out


def _pull(aff: Any, i: int, s: list[int]) -> float:
    """Affinity of class i to the classes of s."""
    return block_sum(aff, [i], s) if is_sparse(aff) else float(aff[i, s].sum())


def choose_subsets(
    confusion: Any,
    *,
    kind: str = "confusion",
    n_clusters: int | None = None,
    method: str = "spectral",
    overlap: int = 0,
    max_specialists: int | None = None,
    max_subset_size: int | None = None,
    min_affinity: float = MIN_AFFINITY,
    strong_affinity: float = STRONG_AFFINITY,
    min_pair_count: float = MIN_PAIR_COUNT,
    random_state: int = 0,
) -> list[list[int]]:
    """The class subsets that get a specialist, most confused first (possibly none).

    Steps, with A the class affinity and ``top`` its largest off-diagonal entry:

    1. ``kind="confusion"``: if :func:`check_signal` finds the counts too weak
       (``min_pair_count``), return ``[]``. Any kind: no affinity at all also returns ``[]``.
    2. Rarely confused classes are left out: class i is kept only if
       ``max_j A[i, j] >= min_affinity * top``.
    3. The kept classes are grouped. ``n_clusters=None``: the connected components of the graph
       whose edges are the pairs with ``A >= min_affinity * top``, a component larger than
       ``max_subset_size`` split by :func:`cluster_classes` into ``ceil(size / max_subset_size)``
       clusters. ``n_clusters=k``: :func:`cluster_classes` on the kept classes into
       ``min(k, kept)`` clusters.
    4. :func:`select_subsets` drops groups of one class, trims to ``max_subset_size`` and adds up
       to ``overlap`` classes from outside each group, among those with an edge (as in step 3)
       to one of its members: never a left-out class, never a class related by noise alone.
       Trimming and ranking read the affinity of the edges only.
    5. Every pair with ``A >= strong_affinity * top`` that no subset holds together is joined by
       adding one of the two to a subset of the other (on top of ``max_subset_size``).
    6. Repeats and subsets covering every class are dropped; the rest are ranked by affinity
       inside (over the edges) and cut to ``max_specialists``.

    Args:
        confusion: (C, C) confusion counts (rows = true class), or the prediction covariance with
            ``kind="covariance"`` (then step 1's count rule does not apply). A ``scipy.sparse``
            matrix is never made dense (15,000 classes: seconds, not a 1.8 GB array); it is
            clustered with ``method="spectral"`` only.
        kind: ``"confusion"`` or ``"covariance"``.
        n_clusters: CLI ``--n-clusters``: None for the components rule, else a cluster count >= 1.
        method: CLI ``--cluster-method``: ``"spectral"``, ``"agglomerative"`` or ``"kmeans"``.
        overlap: CLI ``--overlap``: classes added to each subset from outside it, >= 0.
        max_specialists: CLI ``--max-specialists``: most subsets returned; None: all.
        max_subset_size: CLI ``--max-subset-size``: largest subset before overlap; None: no limit.
        min_affinity: the "rarely confused" threshold, in (0, 1], as a share of ``top``.
        strong_affinity: the "strongly confused" threshold, in (0, 1], as a share of ``top``.
        min_pair_count: the signal rule of :func:`check_signal`.
        random_state: seed for the clusterer.

    Returns:
        Subsets of at least 2 classes, sorted inside, each leaving a class for the dustbin.
    """
    if check_kind(kind) == "affinity":
        raise ValueError("kind must be 'confusion' or 'covariance' for choose_subsets")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    min_affinity = _share(min_affinity, "min_affinity")
    strong_affinity = _share(strong_affinity, "strong_affinity")
    if strong_affinity < min_affinity:
        raise ValueError(f"strong_affinity ({strong_affinity}) must be >= min_affinity "
                         f"({min_affinity}): a strongly confused class is not a rare one")
    overlap = check_count(overlap, "overlap", 0)
    if n_clusters is not None:
        n_clusters = check_count(n_clusters, "n_clusters", 1)
    if max_specialists is not None:
        max_specialists = check_count(max_specialists, "max_specialists", 1)
    if max_subset_size is not None:
        max_subset_size = check_count(max_subset_size, "max_subset_size", 2)
    a = class_affinity(confusion, kind)  # (C, C)
    n = a.shape[0]
    if kind == "confusion" and check_signal(confusion, min_pair_count=min_pair_count).too_weak:
        return []
    top = float(a.max())
    if top <= 0 or n < 3:
        return []

    keep = np.flatnonzero(row_max(a) >= min_affinity * top)  # (K,) confusable classes
    # the affinity among kept classes: left-out ones are never added back
    among = zero_outside(a, keep)
    edges = among >= min_affinity * top  # (C, C) the pairs that are not rarely confused
    groups = _groups(among, edges, keep, n_clusters, method, max_subset_size, random_state)
    # Trim, extend and rank on the edges' affinity: overlap adds only a class confused with a
    # member at least as much as the threshold, never one that is related by noise alone.
    graph = among.multiply(edges).tocsr() if is_sparse(among) else np.where(edges, among, 0.0)
    subsets = adjust_subsets(graph, groups, max_size=max_subset_size, overlap=overlap)
    subsets = _join_strong_pairs(subsets, a, strong_affinity * top, n)
    if not subsets:
        return []
    return adjust_subsets(graph, subsets, max_subsets=max_specialists)


def expected_confusion(probs: Any, y: Any, n_classes: int, *,
                       top_k: int | None = None) -> Any:
    """Expected confusion counts: predicted probabilities summed per true class.

    Args:
        probs: (N, C) predicted probabilities of the generalist.
        y: (N,) true classes.
        n_classes: C.
        top_k: None: dense. An int k: a sparse matrix (for many classes) of each example's k
            most probable classes only; the rest of its probability is dropped.

    Returns:
        (C, C) float64, rows = true class; row c sums to the number of examples of class c
        (less the dropped probability with ``top_k``); a ``scipy.sparse.csr_array`` with
        ``top_k``.
    """
    p = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(y, dtype=np.int64)
    if p.ndim != 2 or p.shape[1] != n_classes or len(labels) != len(p):
        raise ValueError(f"probs must be (N, {n_classes}) with one label per row, got "
                         f"{p.shape} and {labels.shape}")
    if top_k is not None:
        cols, vals = row_top_k(p, top_k)  # (N, k)
        return compact(sp.coo_array((vals.ravel(), (np.repeat(labels, cols.shape[1]),
                                                    cols.ravel())), shape=(n_classes, n_classes)))
    out = np.zeros((n_classes, n_classes))
    np.add.at(out, labels, p)
    return out


def subsets_for_generalist(
    val_counts: Any,
    *,
    train_probs: Any = None,
    train_labels: Any = None,
    class_names: list[str] | None = None,
    **options: Any,
) -> tuple[list[list[int]], str]:
    """The subsets for a generalist's specialists, from the best signal available, and why.

    The validation confusion counts come first. When they are too weak (:func:`check_signal`),
    the expected confusion of the generalist over the training (transfer) set is used instead
    (:func:`expected_confusion`: the paper clustered the generalist's predictions over its whole
    transfer set). When that too is too weak, there are no subsets.

    Args:
        val_counts: (C, C) validation confusion counts.
        train_probs, train_labels: (N, C) predicted probabilities (or a function returning them,
            called only when the fallback is needed) and (N,) labels on the training set; None: no
            fallback.
        class_names: for the messages.
        **options: passed to :func:`choose_subsets`.

    Returns:
        (subsets, one line saying which signal they came from, or why there are none).
    """
    check = check_signal(val_counts, class_names=class_names)
    if not check.too_weak:
        return choose_subsets(val_counts, **options), "subsets from the validation confusion"
    if train_probs is None or train_labels is None:
        return [], f"no specialists: validation confusion: {check.reason}"
    c = np.shape(val_counts)[0]  # np.shape reads .shape: a sparse matrix is not converted
    probs = train_probs() if callable(train_probs) else train_probs
    # Sparse validation counts (many classes): a sparse expected confusion of each example's
    # most probable classes, never a (C, C) array.
    expected = expected_confusion(probs, train_labels, c,
                                  top_k=EXPECTED_TOP_K if is_sparse(val_counts) else None)
    check2 = check_signal(expected, class_names=class_names)
    if check2.too_weak:
        return [], (f"no specialists: validation confusion: {check.reason}; expected confusion on "
                    f"the training set: {check2.reason}")
    return choose_subsets(expected, **options), (
        f"validation confusion too weak ({check.reason}); subsets from the expected confusion of "
        "the generalist on the training set")
