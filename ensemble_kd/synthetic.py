"""Synthetic data with planted groups of confusable classes, so tests know the right clusters."""

from __future__ import annotations

import numpy as np

from .splits import Splits, make_splits

# Defaults of the synthetic data set. Tuned (see tests/test_data.py) so that a
# small MLP reaches roughly 80-85% test accuracy with over 95% of its errors
# inside a planted group: in 32 dimensions group centres sit ~8 noise s.d.
# apart (sqrt(2 * 32) * separation), classes in a group ~3.6 s.d. apart.
SYNTHETIC_DEFAULTS = {
    "n_classes": 30,
    "n_groups": 6,
    "dim": 32,
    "separation": 1.0,  # s.d. of group centres around the origin, per coordinate
    "spread": 0.45,  # s.d. of class means around their group centre, per coordinate
    "n_train": 6000,
    "n_test": 3000,
    "synthetic_seed": 0,  # fixes the data itself; `seed` only moves the validation split
}


def make_synthetic(
    *,
    n_classes: int = 30,
    n_groups: int = 6,
    dim: int = 32,
    separation: float = 1.0,
    spread: float = 0.45,
    n_train: int = 6000,
    n_test: int = 3000,
    synthetic_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[list[int]]]:
    """Gaussian classes whose means cluster into planted groups of confusable classes.

    Group centres ~ N(0, separation^2 I); each class mean ~ N(its centre,
    spread^2 I); each example ~ N(its class mean, I). Classes are assigned to
    groups by a seeded permutation (split as evenly as possible), so a
    clustering method cannot succeed by reading the class order. Labels are
    balanced and shuffled.

    Returns:
        ``(x_train (n_train, dim) float32, y_train (n_train,) int64, x_test, y_test, groups)``.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    if not 1 <= n_groups <= n_classes:
        raise ValueError(f"n_groups must be in [1, n_classes={n_classes}], got {n_groups}")
    if dim < 1:
        raise ValueError(f"dim must be at least 1, got {dim}")
    if not separation > 0 or not spread >= 0:
        raise ValueError(f"need separation > 0 and spread >= 0, got {separation}, {spread}")
    if n_train < n_classes or n_test < 1:
        raise ValueError(
            f"need n_train >= n_classes ({n_classes}) and n_test >= 1, got {n_train}, {n_test}"
        )
    rng = np.random.default_rng(synthetic_seed)
    groups = sorted(
        sorted(int(c) for c in g) for g in np.array_split(rng.permutation(n_classes), n_groups)
    )
    group_of = np.empty(n_classes, dtype=np.int64)
    for g, members in enumerate(groups):
        group_of[members] = g
    centres = rng.normal(0.0, separation, size=(n_groups, dim))  # (G, D)
    means = centres[group_of] + rng.normal(0.0, spread, size=(n_classes, dim))  # (C, D)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % n_classes).astype(np.int64)  # balanced
        x = means[y] + rng.normal(size=(n, dim))  # (n, D)
        return x.astype(np.float32), y

    x_train, y_train = sample(n_train)
    x_test, y_test = sample(n_test)
    return x_train, y_train, x_test, y_test, groups


def load_synthetic(options: dict, val_fraction: float, seed: int) -> Splits:
    """The synthetic data set: :func:`make_synthetic` wrapped as :class:`Splits` with its ``groups``.

    Args:
        options: overrides of :data:`SYNTHETIC_DEFAULTS` (e.g. ``{"n_classes": 10}``).
        val_fraction: share of the training data held out for validation, in (0, 1).
        seed: drives only the validation split; ``synthetic_seed`` fixes the data itself.

    Raises:
        ValueError: an unknown option or an invalid value.
    """
    unknown = sorted(set(options) - set(SYNTHETIC_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown option(s) for synthetic data: {', '.join(unknown)}; "
            f"valid: {', '.join(SYNTHETIC_DEFAULTS)}"
        )
    opts = {**SYNTHETIC_DEFAULTS, **options}
    x_train, y_train, x_test, y_test, groups = make_synthetic(**opts)
    names = [f"c{i:02d}" for i in range(opts["n_classes"])]
    return make_splits(
        "synthetic", x_train, y_train, x_test, y_test, names,
        val_fraction=val_fraction, seed=seed, groups=groups,
    )  # fmt: skip
