"""A synthetic sparse confusion matrix with planted groups of confusable classes, at any scale.

The paper's JFT model had 15,000 classes and 61 specialists of about 300 classes each. This
module makes a confusion matrix of that shape whose right answer is known, so that subset choice
(:func:`specialists.selection.choose_subsets`) can be tested and timed at that scale:

* ``n_groups`` planted groups of ``group_size`` classes each (default 50 x 300 = 15,000 classes);
* for a true class, each class of its own group is ``ratio`` times as likely to receive one of its
  errors as each class outside it (per pair, so with the defaults only 17% of the errors stay
  inside the group: 299 x 10 inside against 14,700 x 1 outside);
* counts sampled like real ones: examples per class vary (log-normal), error rates vary (Beta),
  and each error goes to one sampled class (multinomial), so most pairs get no count at all and the
  matrix is sparse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .checks import check_count

__all__ = ["PlantedConfusion", "planted_confusion"]


@dataclass(frozen=True)
class PlantedConfusion:
    """A sampled confusion matrix and the groups it was planted with.

    Attributes:
        counts: (C, C) ``scipy.sparse.csr_array`` of int64 counts, rows = true class.
        groups: (C,) int array, the planted group of each class (classes are shuffled, so groups
            are not contiguous blocks).
    """

    counts: sp.csr_array
    groups: np.ndarray


def planted_confusion(n_groups: int = 50, group_size: int = 300, *, ratio: float = 10.0,
                      examples_per_class: float = 1000.0, error_rate: float = 0.4,
                      seed: int = 0) -> PlantedConfusion:
    """Sample a sparse confusion matrix of ``n_groups * group_size`` classes with planted groups.

    Class i has ``n_i ~ LogNormal`` examples (median ``examples_per_class``, a factor ~2 spread)
    and an error rate ``e_i ~ Beta`` with mean ``error_rate``; its ``Binomial(n_i, e_i)`` errors go
    each to one other class, a class of its own group being ``ratio`` times as likely as one
    outside it. The rest of its examples are on the diagonal.

    Args:
        n_groups: G, the number of planted groups, >= 1.
        group_size: S, classes per group, >= 2.
        ratio: how many times more likely a confusion with one class of the same group is than
            with one class of another group, > 0.
        examples_per_class: median examples per true class, > 0.
        error_rate: mean share of a class's examples that are misclassified, in (0, 1).
        seed: seeds everything.

    Returns:
        A :class:`PlantedConfusion` with (C, C) sparse counts, C = G * S.
    """
    g = check_count(n_groups, "n_groups", 1)
    s = check_count(group_size, "group_size", 2)
    for name, value, ok in (("ratio", ratio, ratio > 0), ("error_rate", error_rate,
                            0 < error_rate < 1), ("examples_per_class", examples_per_class,
                                                  examples_per_class > 0)):
        if not (np.isfinite(value) and ok):
            raise ValueError(f"{name} is {value!r}: out of range")
    c = g * s
    rng = np.random.default_rng(seed)
    groups = rng.permutation(np.repeat(np.arange(g), s))  # (C,) planted group of each class
    members = np.argsort(groups, kind="stable").reshape(g, s)  # (G, S) classes of each group

    n = np.maximum(1, np.round(examples_per_class * rng.lognormal(0.0, 0.5, c))).astype(np.int64)
    conc = 10.0  # Beta(a, b) with a + b = 10: error rates spread by about +-0.15 around the mean
    rate = rng.beta(conc * error_rate, conc * (1 - error_rate), c)  # (C,)
    errors = rng.binomial(n, rate)  # (C,)

    # Each error stays in the group with probability (S-1) r / ((S-1) r + (C-S)).
    inside_share = (s - 1) * ratio / ((s - 1) * ratio + (c - s)) if c > s else 1.0
    inside = rng.binomial(errors, inside_share)  # (C,)
    outside = errors - inside
    true_in = np.repeat(np.arange(c), inside)
    true_out = np.repeat(np.arange(c), outside)
    # inside: a uniform classmate other than itself (draw among S - 1 and skip its own slot)
    rank = np.empty(c, dtype=np.int64)
    rank[members.ravel()] = np.tile(np.arange(s), g)  # position of each class in its group
    k = rng.integers(0, s - 1, len(true_in))
    k += k >= rank[true_in]
    pred_in = members[groups[true_in], k]
    # outside: a uniform class of another group (draw among C - S and skip its own group's block)
    order = members.ravel()  # classes listed group after group
    k = rng.integers(0, c - s, len(true_out)) if c > s else np.zeros(0, dtype=np.int64)
    k += (k >= groups[true_out] * s) * s
    pred_out = order[k]

    rows = np.concatenate([true_in, true_out, np.arange(c)])
    cols = np.concatenate([pred_in, pred_out, np.arange(c)])
    vals = np.concatenate([np.ones(len(true_in) + len(true_out), dtype=np.int64), n - errors])
    counts = sp.coo_array((vals, (rows, cols)), shape=(c, c)).tocsr()  # duplicates summed
    counts.sum_duplicates()
    return PlantedConfusion(counts=counts, groups=groups)
