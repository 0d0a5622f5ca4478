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
  On mixup/cutmix views (:mod:`ensemble_kd.views`) the labels are mixed as the inputs were:
  ``lam * onehot(y_i) + (1 - lam) * onehot(y_partner)`` (:func:`mixed_targets`).
* ``logit_matching_loss``: the high-temperature limit of the soft term for zero-mean logits,
  ``(1 / (2C)) * sum_i (z_i - v_i)^2`` after removing each example's mean logit, batch mean.

The same code path applies ``T^2`` in every mode; there is no other place that scales it.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .views import Mix

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


def mixed_targets(
    labels: torch.Tensor, partner_labels: torch.Tensor, lam: torch.Tensor, n_classes: int
) -> torch.Tensor:
    """Hard targets of mixed views: ``lam * onehot(labels) + (1 - lam) * onehot(partner_labels)``.

    Args:
        labels: (B,) int64 classes of the examples.
        partner_labels: (B,) int64 classes of their mixup/cutmix partners.
        lam: (B,) weight of each example itself, in [0, 1].
        n_classes: C.

    Returns:
        (B, C) probabilities (each row sums to 1) in ``lam``'s dtype.
    """
    out = torch.zeros(len(labels), n_classes, dtype=lam.dtype, device=lam.device)
    classes = torch.stack([labels.long(), partner_labels.long()], 1)  # (B, 2)
    return out.scatter_add_(1, classes, torch.stack([lam, 1.0 - lam], 1))


def hard_term(student_logits: torch.Tensor, labels: torch.Tensor, mix: Mix | None = None) -> torch.Tensor:
    """Cross-entropy (T = 1, batch mean) of logits (B, C) against labels (B,), mixed by ``mix``."""
    if mix is None:
        return F.cross_entropy(student_logits, labels.long())
    return F.cross_entropy(student_logits, _mixed_label_targets(labels, mix, student_logits))


def _mixed_label_targets(labels: torch.Tensor, mix: Mix, like: torch.Tensor) -> torch.Tensor:
    """:func:`mixed_targets` (B, C) of ``labels`` (B,) and ``mix``, in ``like``'s (B, C) dtype
    and device."""
    if mix.partner_y is None:
        raise ValueError("mixed views need their partners' labels (Mix.partner_y) for a hard term")
    lam = mix.lam.to(device=like.device, dtype=like.dtype)
    return mixed_targets(labels.to(like.device), mix.partner_y.to(like.device), lam, like.shape[-1])


class SoftTargets(NamedTuple):
    """The teachers' side of the soft term, computed once (it needs no gradient).

    For every combine mode the soft term is ``T^2 * mean_b(neg_entropy_b - sum_c probs_bc *
    log softmax(z_b / T)_c)``: cross-entropy is linear in its target, so K teachers reduce to one
    target distribution plus a constant that makes the value a KL divergence.
    """

    probs: torch.Tensor  # (B, C) the combined target distribution
    neg_entropy: torch.Tensor  # (B,) sum_c p log p of the teachers' distributions (weighted)


@torch.no_grad()
def combined_soft_targets(
    teacher_logits: torch.Tensor, temperature: float, *, combine: str = "sum", teacher_weights=None
) -> SoftTargets:
    """Combine K teachers' logits (K, B, C) (or (B, C)) into one soft target per example.

    ``"sum"`` and ``"mean_probs"`` share the target ``sum_k w_k softmax(v_k / T)`` and differ in
    the constant (the weighted teachers' entropies vs the mixture's); ``"mean_logits"`` targets
    ``softmax(sum_k w_k v_k / T)``. No validation: :func:`distillation_loss_parts` validates.
    """
    t = float(temperature)
    v = teacher_logits if teacher_logits.dim() == 3 else teacher_logits.unsqueeze(0)
    w = _teacher_weights(teacher_weights, v.shape[0], v)  # (K,)
    vt = v.permute(2, 0, 1)  # (C, K, B): CPU log_softmax is far faster over a leading dim for small C
    if combine == "mean_logits":
        log_mix = F.log_softmax(torch.einsum("k,ckb->cb", w, vt) / t, 0)  # (C, B)
        probs = log_mix.exp()
        neg_entropy = (probs * log_mix).sum(0)
    else:
        log_p = F.log_softmax(vt / t, 0)  # (C, K, B)
        p = log_p.exp()
        probs = torch.einsum("k,ckb->cb", w, p)  # (C, B)
        if combine == "sum":
            neg_entropy = torch.einsum("k,ckb->b", w, p * log_p)
        else:  # mean_probs: 0 log 0 = 0 where the mixture underflows
            neg_entropy = torch.special.xlogy(probs, probs).sum(0)
    return SoftTargets(probs.T.contiguous(), neg_entropy)


def loss_from_soft_targets(
    student_logits: torch.Tensor,
    targets: SoftTargets,
    labels: torch.Tensor | None = None,
    *,
    temperature: float,
    alpha: float,
    mix: Mix | None = None,
) -> LossParts:
    """The distillation loss against precomputed :class:`SoftTargets` (no validation).

    This is the one place the soft term is computed and scaled by ``T^2``. ``mix``: the batch's
    mixup/cutmix weights, which mix the hard targets as they mixed the inputs.
    """
    t, a = float(temperature), float(alpha)
    zt = student_logits.T  # (C, B): CPU log_softmax is far faster over a leading dim for small C
    if mix is None or labels is None:  # one-hot labels, or none: the fused cross-entropy
        log_q = F.log_softmax(zt / t, 0)
        soft = (targets.neg_entropy - (targets.probs.T * log_q).sum(0)).mean() * (t * t)
        if labels is None:
            return LossParts(soft, soft, None)
        hard = hard_term(student_logits, labels)
        return LossParts(a * soft + (1.0 - a) * hard, soft, hard)
    # mixed views: one log-softmax for both terms, rows 0 (z / T, against the soft targets) and
    # 1 (z, against the labels mixed as the inputs were), and one product with both targets
    log_qh = F.log_softmax(torch.stack([zt / t, zt]), 1)  # (2, C, B)
    both = torch.stack([targets.probs.T.to(log_qh.dtype),
                        _mixed_label_targets(labels, mix, student_logits).T])
    # sum p log q_T and sum y log q_1 over the batch, in float64 (the soft term is a small
    # difference of large sums), then (loss, soft, hard) from one matrix product
    cross = torch.mul(both, log_qh).sum((1, 2), dtype=torch.float64)  # (2,)
    weights, constants = _part_coefficients(t, a, len(student_logits), cross.device)
    neg_h = targets.neg_entropy.sum(dtype=torch.float64)
    loss, soft, hard = (torch.mv(weights, cross) + constants * neg_h).to(log_qh.dtype).unbind()
    return LossParts(loss, soft, hard)


@functools.lru_cache(maxsize=64)
def _part_coefficients(t: float, a: float, b: int, device: torch.device
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, soft, hard) = W @ (sum p log q_T, sum y log q_1) + k * sum_b negH_b: W (3, 2), k (3,)
    in float64 on ``device``, made once per setting (no host-to-device copy per step)."""
    tt = t * t / b
    w = torch.tensor([[-a * tt, -(1.0 - a) / b], [-tt, 0.0], [0.0, -1.0 / b]], dtype=torch.float64)
    k = torch.tensor([a * tt, tt, 0.0], dtype=torch.float64)
    return w.to(device), k.to(device)


def check_loss_options(temperature: float, alpha: float, combine: str) -> tuple[float, float]:
    """Validate temperature, alpha and the combine mode; return (T, alpha) as floats."""
    t = _check_temperature(temperature)
    a = float(alpha)
    if not (0.0 <= a <= 1.0) or math.isnan(a):
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    if combine not in COMBINE_MODES:
        raise ValueError(f"combine must be one of {', '.join(COMBINE_MODES)}; got {combine!r}")
    return t, a


def distillation_loss_parts(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    combine: str = "sum",
    teacher_weights=None,
    mix: Mix | None = None,
) -> LossParts:
    """The distillation loss and its parts. See :func:`distillation_loss` for the arguments;
    ``mix`` mixes the hard targets of mixup/cutmix views (:func:`hard_term`)."""
    t, a = check_loss_options(temperature, alpha, combine)
    v = _validate(student_logits, teacher_logits, labels)  # (K, B, C)
    _teacher_weights(teacher_weights, v.shape[0], student_logits)  # validate before use
    targets = combined_soft_targets(
        v.to(student_logits.dtype), t, combine=combine, teacher_weights=teacher_weights
    )
    return loss_from_soft_targets(student_logits, targets, labels, temperature=t, alpha=a, mix=mix)


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


def hard_loss(student_logits: torch.Tensor, labels: torch.Tensor, mix: Mix | None = None) -> LossParts:
    """Cross-entropy on labels (mixed by ``mix``), as :class:`LossParts` (soft = 0) so training logs
    look alike."""
    hard = hard_term(student_logits, labels, mix)
    return LossParts(hard, torch.zeros((), device=hard.device), hard)
