"""Transfer sets: the training examples a student is distilled on (Hinton et al. 2015, section 3)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .splits import Splits, largest_remainder


@dataclass(eq=False)
class TransferSet:
    """The examples a student is distilled on (Hinton et al. 2015, section 3).

    Attributes:
        x: ``(N, *input_shape)`` inputs.
        y: ``(N,)`` int64 labels, or ``None`` when the transfer set is unlabelled.
        indices: ``(N,)`` int64 positions in ``splits.x_train`` the examples came from
            (ascending), so cached teacher outputs can be looked up.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def make_transfer_set(
    splits: Splits,
    *,
    fraction: float = 1.0,
    omit_classes: Iterable[int] = (),
    labelled: bool = True,
    seed: int = 0,
) -> TransferSet:
    """Choose the training examples a student is distilled on.

    The paper's experiments: all training data; a small stratified fraction of
    it (3% generalises almost as well with soft targets); or everything except
    some classes (an omitted class can still be taught by the soft targets).

    Args:
        splits: the data; examples come from ``splits.x_train``.
        fraction: share of the (kept) training data, in (0, 1]. Stratified and
            seeded; every kept class keeps at least one example, so for tiny
            fractions the set can exceed ``fraction`` by up to one per class.
        omit_classes: class indices whose examples are left out.
        labelled: when False, ``y`` is None (distil from teacher outputs alone).
        seed: the same seed gives the same subset.

    Returns:
        A :class:`TransferSet` with ascending ``indices`` into the training data.
    """
    keep = transfer_indices(splits.y_train.numpy(), splits.n_classes, fraction=fraction,
                            omit_classes=omit_classes, seed=seed)
    idx = torch.from_numpy(keep.astype(np.int64))
    return TransferSet(
        x=splits.x_train[idx],
        y=splits.y_train[idx] if labelled else None,
        indices=idx,
    )


def transfer_indices(
    y: np.ndarray, n_classes: int, *, fraction: float = 1.0, omit_classes: Iterable[int] = (),
    seed: int = 0,
) -> np.ndarray:
    """The positions (ascending, int) of the training labels ``y`` (N,) that
    :func:`make_transfer_set` keeps, with the same arguments; the inputs are not touched.

    Raises:
        ValueError: a fraction outside (0, 1], an unknown class, or nothing left.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    omit = sorted({int(c) for c in omit_classes})
    bad = [c for c in omit if not 0 <= c < n_classes]
    if bad:
        raise ValueError(
            f"omit_classes contains class {bad[0]} but there are only {n_classes} classes"
        )
    if len(omit) == n_classes:
        raise ValueError("omit_classes omits every class: nothing left to transfer on")
    keep = np.flatnonzero(~np.isin(y, omit))
    if fraction < 1.0 and keep.size:
        rng = np.random.default_rng(seed)
        classes, inverse, counts = np.unique(y[keep], return_inverse=True, return_counts=True)
        alloc = largest_remainder(counts, max(1, round(fraction * keep.size)))
        alloc = np.maximum(alloc, 1)  # keep every kept class represented
        chosen = [rng.permutation(keep[inverse == c])[: alloc[c]] for c in range(len(classes))]
        keep = np.sort(np.concatenate(chosen))
    if keep.size == 0:
        raise ValueError(f"the transfer set is empty: no training examples outside classes {omit}")
    return keep
