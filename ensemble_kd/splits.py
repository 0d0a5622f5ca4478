"""Data held in memory as tensors: :class:`Splits`, and seeded stratified splits.

Data of MNIST size fits in memory many times over, and the training loop slices batches from a
permutation, so nothing here is a ``Dataset``/``DataLoader``. Every loader (:mod:`ensemble_kd.data`)
ends in :func:`make_splits`, which carves the seeded validation split out of the training data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(eq=False)  # eq on tensors is ambiguous; compare fingerprints instead
class Splits:
    """A data set held in memory as tensors, with a fixed seeded validation split.

    Attributes:
        name: data set name, e.g. ``"digits"``.
        x_train: ``(N, *input_shape)`` float32 inputs.
        y_train: ``(N,)`` int64 labels in ``[0, n_classes)``.
        x_val, y_val: the validation split, same layout (carved from the training data).
        x_test, y_test: the test split, same layout.
        class_names: one name per class; its length defines ``n_classes``.
        groups: the planted partition of classes into confusable groups (sorted
            lists), known only for synthetic data.
    """

    name: str
    x_train: torch.Tensor  # (N, *input_shape)
    y_train: torch.Tensor  # (N,)
    x_val: torch.Tensor  # (N_val, *input_shape)
    y_val: torch.Tensor  # (N_val,)
    x_test: torch.Tensor  # (N_test, *input_shape)
    y_test: torch.Tensor  # (N_test,)
    class_names: list[str]
    groups: list[list[int]] | None = None
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        shape = tuple(self.x_train.shape[1:])
        for part in ("train", "val", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if y.ndim != 1 or x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"x_{part} has {x.shape[0]} rows but y_{part} has shape {tuple(y.shape)}"
                )
            if tuple(x.shape[1:]) != shape:
                raise ValueError(
                    f"x_{part} has input shape {tuple(x.shape[1:])}, x_train has {shape}"
                )
            if x.is_floating_point() and not torch.isfinite(x).all():
                raise ValueError(f"x_{part} holds non-finite values (nan or inf)")
            if y.is_floating_point() or y.is_complex():
                raise ValueError(f"y_{part} must hold integer labels, got {y.dtype}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(self.class_names)):
                raise ValueError(
                    f"y_{part} holds labels in [{int(y.min())}, {int(y.max())}] but there are "
                    f"only {len(self.class_names)} class names"
                )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 28, 28)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def n_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    def fingerprint(self) -> str:
        """SHA-256 hex digest of the name, every array (dtype, shape, bytes), class names, groups.

        Identifies the exact data a cached result was computed on. Computed once
        and cached: tensors are treated as immutable once wrapped in ``Splits``.
        Hashing the raw buffers takes well under a second for 60k x 784 float32.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"name={self.name}\n".encode())
            for key in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
                arr = np.ascontiguousarray(getattr(self, key).detach().cpu().numpy())
                h.update(f"{key}:{arr.dtype.str}:{arr.shape}\n".encode())
                h.update(memoryview(arr).cast("B"))
            h.update(f"classes={self.class_names!r}\ngroups={self.groups!r}\n".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def describe(self) -> str:
        """One line: name, split sizes, number of classes, input shape."""
        return (
            f"{self.name}: {len(self.y_train)} train / {len(self.y_val)} val / "
            f"{len(self.y_test)} test, {self.n_classes} classes, input shape {self.input_shape}"
        )


def largest_remainder(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` across classes in proportion to ``counts`` (largest-remainder rounding).

    Args:
        counts: ``(C,)`` examples per class.
        total: how many to allocate.

    Returns:
        ``(C,)`` int64 allocation summing to ``total``; ties in the remainders go to the lower
        class index, so the result is deterministic.
    """
    quota = counts * (total / max(int(counts.sum()), 1))
    alloc = np.floor(quota).astype(np.int64)
    short = total - int(alloc.sum())
    if short > 0:
        # Stable sort: ties go to the lower class index, so the result is deterministic.
        order = np.argsort(-(quota - alloc), kind="stable")
        alloc[order[:short]] += 1
    return alloc


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of example indices into (kept, held out).

    Each class gives ``fraction`` of its examples (largest-remainder rounding, so
    the held-out total is ``round(fraction * N)``); a class never gives away its
    last example. Where that leaves nothing held out (every class a singleton),
    the held-out examples are drawn without stratification.

    Args:
        y: ``(N,)`` integer labels.
        fraction: share held out, in (0, 1).
        seed: the same seed gives the same split.

    Returns:
        ``(kept, held_out)``: ascending int64 index arrays that partition ``range(N)``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
    n = len(y)
    if n < 2:
        raise ValueError(f"cannot split {n} example(s): need at least 2")
    total = min(max(1, round(fraction * n)), n - 1)
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    alloc = np.minimum(largest_remainder(counts, total), counts - 1)
    held = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        held.append(rng.permutation(members)[: alloc[c]])
    held_out = np.concatenate(held) if held else np.empty(0, np.int64)
    if held_out.size == 0:
        held_out = rng.permutation(n)[:total]
    mask = np.zeros(n, dtype=bool)
    mask[held_out] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def make_splits(
    name: str,
    x_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray,
    x_test: np.ndarray | torch.Tensor,
    y_test: np.ndarray,
    class_names: list[str],
    *,
    val_fraction: float,
    seed: int,
    groups: list[list[int]] | None = None,
) -> Splits:
    """Carve the seeded validation split out of the training data and wrap all as tensors.

    Args:
        name: data set name.
        x_train: ``(N, *input_shape)`` training inputs (converted to float32).
        y_train: ``(N,)`` integer labels.
        x_test: ``(N_test, *input_shape)`` test inputs.
        y_test: ``(N_test,)`` integer labels.
        class_names: one name per class.
        val_fraction: share of the training data held out for validation, in (0, 1).
        seed: drives only the validation split (see :func:`stratified_split`).
        groups: the planted groups of confusable classes, when known.

    Returns:
        The :class:`Splits`; its ``x_train`` / ``x_val`` rows keep their original order.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train_idx, val_idx = stratified_split(np.asarray(y_train), val_fraction, seed)
    xt = torch.as_tensor(x_train, dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y_train), dtype=torch.int64)
    tr, va = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return Splits(
        name=name,
        x_train=xt[tr],
        y_train=yt[tr],
        x_val=xt[va],
        y_val=yt[va],
        x_test=torch.as_tensor(x_test, dtype=torch.float32),
        y_test=torch.as_tensor(np.asarray(y_test), dtype=torch.int64),
        class_names=list(class_names),
        groups=groups,
    )
