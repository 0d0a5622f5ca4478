"""Distillation losses (Hinton, Vinyals & Dean, 2015, "Distilling the Knowledge in a Neural Network").

Notation: student logits ``z`` (B, C), teacher logits ``v`` (B, C) or (K, B, C), temperature ``T``.

* ``soft_targets(v, T) = softmax(v / T)``.
* soft term for one teacher: ``T^2 * KL(softmax(v/T) || softmax(z/T))``, mean over the batch. Its
  gradient with respect to ``z_i`` is ``T * (q_i - p_i) / B`` (q: student, p: teacher soft targets); the
  ``T^2`` keeps the soft gradients on the scale of the hard ones as T changes.
* several teachers (``combine``):

  - ``"sum"``: the paper's multi-task loss, ``sum_k w_k * soft_k``. Cross-entropy is linear in its
    target, so this has the same gradient as ``"mean_probs"``; the values differ by the teachers'
    entropies (a constant).
  - ``"mean_probs"``: one soft term against the arithmetic mean ``sum_k w_k softmax(v_k/T)``.
  - ``"mean_logits"``: one soft term against ``softmax(sum_k w_k v_k / T)`` (a geometric mean of the
    distributions: a different target).

* with labels: ``alpha * soft + (1 - alpha) * CE(labels, softmax(z))`` (T = 1 for the hard term).
* ``logit_matching_loss``: the high-temperature limit of the soft term for zero-mean logits,
  ``(1 / (2C)) * sum_i (z_i - v_i)^2`` after removing each example's mean logit, batch mean.

The same code path applies ``T^2`` in every mode; there is no other place that scales it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

COMBINE_MODES = ("sum", "mean_probs", "mean_logits")


class LossParts(NamedTuple):
    """A loss with its parts, for logging. ``hard`` is None when no labels were given."""

    loss: torch.Tensor  # scalar, what to backpropagate
    soft: torch.Tensor  # scalar, the (T^2-scaled) soft term
    hard: torch.Tensor | None  # scalar cross-entropy on labels at T = 1, or None


def _check_temperature(temperature: float) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a number, got {temperature!r}") from None
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    return t


def _check_finite(name: str, x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain non-finite values (nan or inf)")


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax at temperature T over the last dimension: ``softmax(logits / T)``.

    Args:
        logits: (..., C) unnormalised log-probabilities.
        temperature: T > 0; 1 is the ordinary softmax, larger values soften the distribution.

    Returns:
        (..., C) probabilities.
    """
    t = _check_temperature(temperature)
    return torch.softmax(logits / t, dim=-1)


def _teacher_weights(weights, k: int, like: torch.Tensor) -> torch.Tensor:
    """Normalised teacher weights, (K,), uniform by default."""
    if weights is None:
        return torch.full((k,), 1.0 / k, dtype=like.dtype, device=like.device)
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device).flatten()
    if w.numel() != k:
        raise ValueError(f"teacher_weights has {w.numel()} entries but there are {k} teachers")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError("teacher_weights must be finite and non-negative")
    total = w.sum()
    if total <= 0:
        raise ValueError("teacher_weights must not all be zero")
    return w / total


def _validate(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None
) -> torch.Tensor:
    """Check shapes/values and return teacher logits as (K, B, C)."""
    if student_logits.dim() != 2:
        raise ValueError(f"student_logits must be (B, C), got shape {tuple(student_logits.shape)}")
    if teacher_logits.dim() == 2:
        teacher_logits = teacher_logits.unsqueeze(0)
    if teacher_logits.dim() != 3:
        raise ValueError(
            f"teacher_logits must be (B, C) or (K, B, C), got shape {tuple(teacher_logits.shape)}"
        )
    b, c = student_logits.shape
    if teacher_logits.shape[-1] != c:
        raise ValueError(
            f"class-count mismatch: student has {c} classes, teacher logits have "
            f"{teacher_logits.shape[-1]}"
        )
    if teacher_logits.shape[1] != b:
        raise ValueError(
            f"batch-size mismatch: student logits have {b} rows, teacher logits have "
            f"{teacher_logits.shape[1]}"
        )
    _check_finite("student logits", student_logits)
    _check_finite("teacher logits", teacher_logits)
    if labels is not None:
        if labels.shape != (b,):
            raise ValueError(f"labels must have shape ({b},), got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point:
            raise ValueError("labels must be integer class indices")
        if b and (labels.min() < 0 or labels.max() >= c):
            raise ValueError(
                f"labels out of range: values must lie in [0, {c - 1}], found "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
    return teacher_logits


def _kl_from_log(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over the last dim, from log-probabilities; (..., C) -> (...)."""
    p = log_p.exp()
    # where p underflows to 0 its term is 0 (0 * log 0 = 0); log_p is finite for finite logits
    return (p * (log_p - log_q)).sum(-1)


def distillation_loss_parts(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    combine: str = "sum",
    teacher_weights=None,
) -> LossParts:
    """The distillation loss and its parts. See :func:`distillation_loss` for the arguments."""
    t = _check_temperature(temperature)
    a = float(alpha)
    if not (0.0 <= a <= 1.0) or math.isnan(a):
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    if combine not in COMBINE_MODES:
        raise ValueError(f"combine must be one of {', '.join(COMBINE_MODES)}; got {combine!r}")
    v = _validate(student_logits, teacher_logits, labels)  # (K, B, C)
    k = v.shape[0]
    w = _teacher_weights(teacher_weights, k, student_logits)  # (K,)
    v = v.to(student_logits.dtype)

    log_q = F.log_softmax(student_logits / t, dim=-1)  # (B, C)
    if combine == "sum":
        log_p = F.log_softmax(v / t, dim=-1)  # (K, B, C)
        kl = _kl_from_log(log_p, log_q.unsqueeze(0))  # (K, B)
        soft = (w[:, None] * kl).sum(0).mean()
    elif combine == "mean_probs":
        log_p = F.log_softmax(v / t, dim=-1)  # (K, B, C)
        log_mix = torch.logsumexp(log_p + w.log()[:, None, None], dim=0)  # (B, C)
        soft = _kl_from_log(log_mix, log_q).mean()
    else:  # mean_logits
        v_mean = (w[:, None, None] * v).sum(0)  # (B, C)
        soft = _kl_from_log(F.log_softmax(v_mean / t, dim=-1), log_q).mean()
    soft = soft * (t * t)

    if labels is None:
        return LossParts(soft, soft, None)
    hard = F.cross_entropy(student_logits, labels.long())
    return LossParts(a * soft + (1.0 - a) * hard, soft, hard)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    combine: str = "sum",
    teacher_weights=None,
) -> torch.Tensor:
    """Knowledge-distillation loss of Hinton et al. (2015), a scalar.

    Args:
        student_logits: (B, C).
        teacher_logits: (B, C) for one teacher or (K, B, C) for K teachers.
        labels: (B,) int64 class indices, or None for an unlabelled transfer set (soft term only).
        temperature: T > 0 for the soft term; the hard term always uses T = 1.
        alpha: weight of the soft term in [0, 1]; ``1 - alpha`` weighs the hard term.
        combine: ``"sum"`` (one T^2-scaled KL per teacher, weighted sum: the multi-task loss),
            ``"mean_probs"`` (KL to the weighted mean of the teachers' soft distributions) or
            ``"mean_logits"`` (KL to the softmax of the weighted mean logits).
        teacher_weights: (K,) non-negative weights, normalised to sum to 1; uniform when None.

    Returns:
        Scalar tensor ``alpha * soft + (1 - alpha) * hard`` (or ``soft`` without labels), where
        ``soft`` is ``T^2 * KL(teacher || student)`` averaged over the batch.

    Raises:
        ValueError: T <= 0 or not finite, alpha outside [0, 1], unknown combine mode, shape or
            class-count mismatch, non-finite logits, labels out of range, bad teacher weights.
    """
    return distillation_loss_parts(
        student_logits,
        teacher_logits,
        labels,
        temperature=temperature,
        alpha=alpha,
        combine=combine,
        teacher_weights=teacher_weights,
    ).loss


def logit_matching_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Logit matching, the high-temperature limit of the soft term (Hinton et al. 2015, sec. 2.1).

    ``(1 / (2C)) * sum_i (z_i - v_i)^2`` on per-example zero-meaned logits, mean over the batch. For
    zero-mean logits, ``T^2 * KL(softmax(v/T) || softmax(z/T))`` tends to this as T grows.

    Args:
        student_logits: (B, C).
        teacher_logits: (B, C).
    """
    v = _validate(student_logits, teacher_logits, None)
    if v.shape[0] != 1:
        raise ValueError("logit_matching_loss takes one teacher's logits, (B, C)")
    z = student_logits - student_logits.mean(-1, keepdim=True)
    v = v[0] - v[0].mean(-1, keepdim=True)
    c = student_logits.shape[-1]
    return ((z - v) ** 2).sum(-1).mean() / (2 * c)


def hard_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> LossParts:
    """Plain cross-entropy on labels, as :class:`LossParts` (soft = 0) so training logs look alike."""
    hard = F.cross_entropy(student_logits, labels.long())
    return LossParts(hard, torch.zeros((), device=hard.device), hard)
