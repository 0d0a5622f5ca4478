"""Class subsets for specialists: validation, dustbin targets and folding.

A specialist for subset ``S`` (a list of class indices) has ``len(S) + 1``
outputs: the classes of ``S`` in the order given, then one *dustbin* class
standing for every class outside ``S`` (Hinton, Vinyals & Dean 2015, sec. 5).
Folding a full distribution ``q`` over ``C`` classes into that output space is
the linear map ``A_S q`` of DESIGN.md: copy the columns of ``S``, sum the rest
into the dustbin.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch


def _as_int(value: object, where: str) -> int:
    """Return ``value`` as a python int, refusing bools, floats and other types."""
    # bool is an Integral subclass; a True in a subset is almost surely a bug.
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point():
            if value.dtype != torch.bool:
                return int(value.item())
        raise ValueError(f"{where} is {value!r} ({type(value).__name__}), expected an int")
    return int(value)


def _check_subset(
    subset: object, name: str, n_classes: int | None, *, min_size: int = 2
) -> list[int]:
    """Validate one subset; ``n_classes=None`` skips the upper-range and cover-all checks."""
    if isinstance(subset, str | bytes) or not isinstance(
        subset, Sequence | np.ndarray | torch.Tensor
    ):
        raise ValueError(f"{name} is {type(subset).__name__}, expected a list of class indices")
    if isinstance(subset, np.ndarray | torch.Tensor) and subset.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(subset.shape)}")
    out = [_as_int(c, f"{name}[{j}]") for j, c in enumerate(subset)]
    if len(out) < min_size:
        raise ValueError(
            f"{name} has {len(out)} class(es); a specialist subset needs at least {min_size}"
        )
    seen: set[int] = set()
    for c in out:
        if c < 0:
            raise ValueError(f"{name} contains negative class {c}")
        if n_classes is not None and c >= n_classes:
            raise ValueError(
                f"{name} contains class {c} but there are only {n_classes} classes"
            )
        if c in seen:
            raise ValueError(f"{name} contains class {c} more than once")
        seen.add(c)
    if n_classes is not None and len(out) >= n_classes:
        raise ValueError(
            f"{name} covers all {n_classes} classes, which would leave its dustbin empty"
        )
    return out


def validate_subsets(subsets: Sequence[Sequence[int]], n_classes: int) -> list[list[int]]:
    """Check specialist subsets and return them as plain lists of python ints.

    Rules: a non-empty list of subsets; each subset a list of ints in
    ``[0, n_classes)`` with no repeats, at least 2 classes and not every class
    (the dustbin must stand for something). Different subsets may overlap.

    Args:
        subsets: M subsets of class indices.
        n_classes: C, the number of classes of the full problem.

    Returns:
        The subsets as ``list[list[int]]``, order inside each subset preserved.

    Raises:
        ValueError: naming the offending subset index and the problem.
    """
    n_classes = _as_int(n_classes, "n_classes")
    if n_classes < 3:
        raise ValueError(
            f"n_classes is {n_classes}; specialists need at least 3 classes "
            "(2 in the subset plus 1 in the dustbin)"
        )
    if isinstance(subsets, str | bytes) or not isinstance(subsets, Sequence):
        raise ValueError(f"subsets is {type(subsets).__name__}, expected a list of lists")
    if len(subsets) == 0:
        raise ValueError("subsets is empty; give at least one subset")
    return [_check_subset(s, f"subsets[{i}]", n_classes) for i, s in enumerate(subsets)]


def _check_labels(labels: torch.Tensor) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels is {type(labels).__name__}, expected a torch.Tensor")
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"labels contain negative class {int(labels.min())}")
    return labels.long()


def specialist_targets(labels: torch.Tensor, subset: Sequence[int]) -> torch.Tensor:
    """Map full-problem labels to a specialist's label space.

    Args:
        labels: (N,) integer class labels in the full problem.
        subset: the specialist's classes S (its output order).

    Returns:
        (N,) long tensor: ``S.index(label)`` for labels in S, ``len(S)`` (the
        dustbin) for every other label.
    """
    labels = _check_labels(labels)
    subset = _check_subset(subset, "subset", None)
    size = max(max(subset), int(labels.max()) if labels.numel() else 0) + 1
    table = torch.full((size,), len(subset), dtype=torch.long, device=labels.device)
    table[torch.tensor(subset, device=labels.device)] = torch.arange(
        len(subset), device=labels.device
    )
    return table[labels]  # (N,)


def _check_last_dim(x: torch.Tensor, name: str) -> int:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} is {type(x).__name__}, expected a torch.Tensor")
    if x.ndim < 1 or not x.is_floating_point():
        raise ValueError(
            f"{name} must be a floating tensor (..., C), got {x.dtype} {tuple(x.shape)}"
        )
    return x.shape[-1]


def _subset_mask(subset: list[int], n_classes: int, device: torch.device) -> torch.Tensor:
    mask = torch.zeros(n_classes, dtype=torch.bool, device=device)
    mask[torch.tensor(subset, device=device)] = True
    return mask  # (C,)


def fold_probs(probs: torch.Tensor, subset: Sequence[int]) -> torch.Tensor:
    """Fold full distributions into a specialist's space: ``A_S q`` of DESIGN.md.

    Args:
        probs: (B, C) probabilities (any leading shape works: (..., C)).
        subset: the specialist's classes S.

    Returns:
        (B, len(S) + 1): the columns of S in the order of S, then the dustbin
        column, the sum of all columns outside S (summed directly rather than
        taken as ``1 - sum(S)``, which loses the dustbin's digits when it is tiny).
    """
    n_classes = _check_last_dim(probs, "probs")
    subset = _check_subset(subset, "subset", n_classes)
    idx = torch.tensor(subset, device=probs.device)
    other = ~_subset_mask(subset, n_classes, probs.device)
    inside = probs.index_select(-1, idx)  # (B, |S|)
    dustbin = probs[..., other].sum(-1, keepdim=True)  # (B, 1)
    return torch.cat([inside, dustbin], dim=-1)


def fold_logits(logits: torch.Tensor, subset: Sequence[int], temperature: float) -> torch.Tensor:
    """Fold logits so that their softmax at ``temperature`` is the folded softmax.

    ``softmax(fold_logits(z, S, T) / T) == fold_probs(softmax(z / T), S)``
    exactly (up to rounding): the logits of S are copied and the dustbin logit
    is ``T * logsumexp(z_other / T)``, whose exponential at T is the summed
    probability mass outside S. Used to give a specialist the generalist's
    soft targets.

    Args:
        logits: (B, C) logits (any leading shape: (..., C)).
        subset: the specialist's classes S.
        temperature: T > 0.

    Returns:
        (B, len(S) + 1) logits.
    """
    n_classes = _check_last_dim(logits, "logits")
    subset = _check_subset(subset, "subset", n_classes)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ValueError(f"temperature is {temperature!r}, expected a positive number")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    idx = torch.tensor(subset, device=logits.device)
    other = ~_subset_mask(subset, n_classes, logits.device)
    inside = logits.index_select(-1, idx)  # (B, |S|)
    dustbin = temperature * torch.logsumexp(logits[..., other] / temperature, dim=-1)  # (B,)
    return torch.cat([inside, dustbin.unsqueeze(-1)], dim=-1)


def coverage(labels: torch.Tensor, subsets: Sequence[Sequence[int]]) -> torch.Tensor:
    """Count, for each example, how many subsets contain its label.

    Args:
        labels: (N,) integer class labels.
        subsets: M subsets of class indices (may overlap).

    Returns:
        (N,) long tensor with values in ``[0, M]``.
    """
    labels = _check_labels(labels)
    if isinstance(subsets, str | bytes) or not isinstance(subsets, Sequence) or not subsets:
        raise ValueError("subsets must be a non-empty list of subsets")
    checked = [_check_subset(s, f"subsets[{i}]", None) for i, s in enumerate(subsets)]
    size = max(max(max(s) for s in checked), int(labels.max()) if labels.numel() else 0) + 1
    counts = torch.zeros(size, dtype=torch.long, device=labels.device)
    for s in checked:
        counts[torch.tensor(s, device=labels.device)] += 1
    return counts[labels]  # (N,)
