"""Dustbin specialists: build one from the generalist and train it.

A specialist for subset ``S`` (Hinton, Vinyals & Dean 2015, sec. 5) starts as a copy of the
generalist whose head is cut down to ``len(S) + 1`` outputs: the classes of ``S`` in the order
given, then one *dustbin* class for every other class. It is trained by the shared loop
(:func:`ensemble_kd.train.train`) on batches of which ``share`` (default half) come from ``S``, with
the generalist's soft targets folded into ``S`` + dustbin guarding it against overfitting. Because
the mix shifts the class prior, a correction is added to the dustbin bias after training
(:mod:`specialists.calibration`): the closed-form prior shift for hard labels (``alpha = 0``), a
bias fitted on the natural validation split otherwise; or, with ``calibration="vector"``, a
temperature and a bias per output fitted on that split (:func:`calibrate_specialist`). The
returned model's logits are calibrated for data in its natural proportions.

Saving, loading and the folder of several specialists are :mod:`specialists.specialist`'s job.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ensemble_kd.batching import Batch, MixedBatches
from ensemble_kd.cache import teachers_fingerprint
from ensemble_kd.data import Splits
from ensemble_kd.losses import LossParts, distillation_loss_parts, hard_loss
from ensemble_kd.models import replace_head
from ensemble_kd.predict import predict_logits, resolve_device
from ensemble_kd.train import Objective, TrainConfig, train

from .calibration import dustbin_log_correction, fit_dustbin_correction, fit_vector_scaling
from .subsets import fold_logits, specialist_targets, validate_subsets

__all__ = [
    "FITTED",
    "PRIOR_SHIFT",
    "VECTOR",
    "Specialist",
    "SpecialistConfig",
    "build_specialist",
    "calibrate_specialist",
    "mean_head_input",
    "specialist_objective",
    "train_specialist",
]

PRIOR_SHIFT = "prior_shift"  # closed-form dustbin correction (alpha = 0)
FITTED = "fitted_on_validation"  # dustbin bias fitted on the natural validation split
VECTOR = "vector_scaling_on_validation"  # temperature + a bias per output, fitted there
CALIBRATIONS = ("auto", "vector")  # SpecialistConfig.calibration


@dataclass
class SpecialistConfig:
    """How a specialist is trained (on top of the shared ``ensemble_kd.train.TrainConfig``)."""

    share: float = 0.5  # share of each batch drawn from the subset's classes; the paper used half
    # weight of the generalist's folded soft targets; 0 = hard labels only (the default: the
    # generalist's own soft targets pull a specialist back towards the generalist; on
    # Fashion-MNIST they cost the specialists their gain: README, "The default run on
    # Fashion-MNIST")
    alpha: float = 0.0
    temperature: float = 2.0  # T of those soft targets (the specialist still predicts at T = 1)
    freeze_body: bool = False  # train only the head (the body stays the generalist's, in eval mode)
    jitter: int = 0  # random input shifts in pixels; with alpha > 0 the generalist then runs online
    anchor_dustbin: bool = (
        True  # start the dustbin logit as the tangent at the mean training feature
    )
    # after training: "auto" = the dustbin bias alone, by the closed-form prior shift (alpha = 0)
    # or fitted on the validation split (alpha > 0); "vector" = a temperature and a bias per
    # output fitted on the validation split (needs examples of the subset and of the rest there)
    calibration: str = "auto"

    def validate(self) -> SpecialistConfig:
        if not 0.0 < self.share < 1.0:
            raise ValueError(f"share must lie strictly between 0 and 1, got {self.share}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")
        if self.jitter < 0:
            raise ValueError(f"jitter must be >= 0 pixels, got {self.jitter}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration is {self.calibration!r}, expected one of "
                             f"{', '.join(CALIBRATIONS)}")
        return self


@dataclass
class Specialist:
    """A trained specialist.

    Attributes:
        model: maps (B, *input_shape) to logits (B, len(subset) + 1), dustbin last, with the dustbin
            correction already in the head's bias; eval mode.
        subset: its classes, in output order.
        dustbin_correction: added to the dustbin bias after training (nats): the prior shift
            for hard labels, or the bias fitted on the validation split (``calibration``).
        history: the shared loop's per-epoch metrics (validation in the specialist's label space).
        meta: what was saved beside the weights (data fingerprint, class names, ...).
        calibration: how ``dustbin_correction`` was found: ``"prior_shift"``,
            ``"fitted_on_validation"`` or ``"vector_scaling_on_validation"`` (then the logits
            were also divided by ``temperature``).
        temperature: the temperature the head's weights and biases were divided by (1.0 unless
            ``calibration`` is vector scaling).
    """

    model: nn.Module
    subset: list[int]
    dustbin_correction: float
    history: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    calibration: str = PRIOR_SHIFT
    temperature: float = 1.0


def _check_subset(subset: Sequence[int], n_classes: int) -> list[int]:
    """One validated subset; the error names it ``subset`` (not ``subsets[0]``)."""
    try:
        return validate_subsets([subset], n_classes)[0]
    except ValueError as e:
        raise ValueError(str(e).replace("subsets[0]", "subset", 1)) from None


def _head(model: nn.Module) -> nn.Linear:
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(
            "the model has no final nn.Linear called 'head' (build it with build_model)"
        )
    return head


@torch.no_grad()
def mean_head_input(model: nn.Module, x: torch.Tensor, *, batch_size: int = 2048) -> torch.Tensor:
    """Mean of the features the model's ``head`` receives over inputs ``x`` (eval mode).

    Args:
        model: a model whose final layer is ``model.head``.
        x: (N, *input_shape) inputs.

    Returns:
        (D,) float64 mean feature, D = ``model.head.in_features``, on the CPU.
    """
    head = _head(model)
    total = torch.zeros(head.in_features, dtype=torch.float64)
    count = 0

    def grab(_module, args):
        nonlocal total, count
        feats = args[0].detach().double().cpu()  # (B, D)
        total += feats.sum(0)
        count += feats.shape[0]

    handle = head.register_forward_pre_hook(grab)
    try:
        predict_logits(model, x, batch_size=batch_size)
    finally:
        handle.remove()
    return total / max(count, 1)


@torch.no_grad()
def build_specialist(
    generalist: nn.Module, subset: Sequence[int], *, anchor_x: torch.Tensor | None = None
) -> nn.Module:
    """A copy of the generalist with a head for ``subset`` + dustbin (untrained, eval mode).

    The body and its weights are copied; the head's rows for the subset's classes are the
    generalist's rows (weights and biases) in subset order, so those logits start exactly equal.
    The dustbin should start as the folded logit ``logsumexp_{j not in S}(w_j . h + b_j)``, which is
    not linear in the feature ``h``. It is initialised as that function's tangent plane at an anchor
    feature ``h0``: with ``a_j = w_j . h0 + b_j`` and ``pi = softmax(a)`` over the other classes,

        weight = sum_j pi_j w_j,    bias = logsumexp(a) - weight . h0,

    which is exact at ``h0`` and (logsumexp being convex) a lower bound elsewhere. ``h0`` is the
    mean feature of ``anchor_x`` when given, else 0 (then weight = softmax(b)-weighted mean of the
    other rows, bias = logsumexp(b)). A plain mean of rows with bias logsumexp(b) matches this only
    when the other classes' biases are equal; the tangent weighs each row by its share of the
    dustbin.

    Args:
        generalist: a model from :func:`ensemble_kd.models.build_model` (final ``nn.Linear`` head).
        subset: the specialist's classes S (at least 2, not all).
        anchor_x: (N, *input_shape) inputs whose mean feature anchors the dustbin row (e.g. the
            training data); None anchors at the zero feature.

    Returns:
        The specialist model, with ``spec`` recording ``head_out = len(S) + 1``.
    """
    old = _head(generalist)
    subset = _check_subset(subset, old.out_features)
    w = old.weight.detach().double()  # (C, D)
    b = (
        old.bias.detach().double()
        if old.bias is not None
        else torch.zeros(old.out_features, dtype=torch.float64, device=w.device)
    )  # (C,)
    idx = torch.tensor(subset, device=w.device)
    others = torch.ones(old.out_features, dtype=torch.bool, device=w.device)
    others[idx] = False
    if anchor_x is not None:
        h0 = mean_head_input(generalist, anchor_x).to(w.device)  # (D,)
    else:
        h0 = torch.zeros(old.in_features, dtype=torch.float64, device=w.device)
    a = w[others] @ h0 + b[others]  # (C - |S|,)
    pi = torch.softmax(a, 0)
    w_dust = pi @ w[others]  # (D,)
    b_dust = torch.logsumexp(a, 0) - w_dust @ h0

    model = copy.deepcopy(generalist)  # keeps `spec`; replace_head adds head_out to it
    new = replace_head(model, len(subset) + 1)
    new.weight.copy_(torch.cat([w[idx], w_dust[None]]).to(new.weight.dtype))
    new.bias.copy_(torch.cat([b[idx], b_dust[None]]).to(new.bias.dtype))
    return model.eval()


def specialist_objective(
    targets: torch.Tensor,
    folded: torch.Tensor | None,
    config: SpecialistConfig,
    *,
    generalist: nn.Module | None = None,
    subset: Sequence[int] | None = None,
) -> Objective:
    """The specialist's loss for the shared loop, looked up by the batch's positions.

    Args:
        targets: (N,) labels of the whole training set in the specialist's space (dustbin = |S|).
        folded: (N, |S| + 1) the generalist's logits folded at T (``fold_logits``), or None when
            ``alpha == 0`` or the generalist runs online.
        config: alpha and temperature.
        generalist, subset: run the generalist on each batch instead of reading ``folded`` (needed
            when inputs are jittered, since precomputed logits describe the unshifted inputs).

    Returns:
        ``(logits (B, |S|+1), batch) -> LossParts``: ``alpha * T^2 KL + (1 - alpha) * CE`` via
        :func:`ensemble_kd.losses.distillation_loss_parts`, or plain CE when alpha is 0.
    """
    t, alpha = float(config.temperature), float(config.alpha)
    if alpha > 0 and folded is None and generalist is None:
        raise ValueError("alpha > 0 needs the generalist's folded logits or the generalist itself")

    def objective(logits: torch.Tensor, batch: Batch) -> LossParts:
        idx = batch.idx.to(targets.device)
        y = targets[idx].to(logits.device)  # (B,)
        if alpha == 0:
            return hard_loss(logits, y)
        if generalist is not None:
            with torch.no_grad():
                v = fold_logits(generalist(batch.x).float(), subset, t)  # (B, |S|+1)
        else:
            v = folded[idx.to(folded.device)].to(logits.device)  # (B, |S|+1)
        return distillation_loss_parts(logits, v, y, temperature=t, alpha=alpha)

    return objective


def _keep_children_in_eval(module: nn.Module, _args) -> None:
    """Pre-hook: a frozen body runs as at inference (BatchNorm running stats, no dropout)."""
    if module.training:
        for name, child in module.named_children():
            if name != "head":
                child.eval()


def train_specialist(
    generalist: nn.Module,
    subset: Sequence[int],
    splits: Splits,
    train_config: TrainConfig,
    spec_config: SpecialistConfig | None = None,
    *,
    run_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    desc: str | None = None,
) -> Specialist:
    """Train one dustbin specialist for ``subset``, starting from the generalist's weights.

    Args:
        generalist: the trained generalist, C = ``splits.n_classes`` outputs (left unchanged).
        subset: the specialist's classes S.
        splits: training data (the mix is drawn from it) and validation data (monitored in the
            specialist's label space, before the dustbin correction; with ``alpha > 0`` the
            dustbin bias is fitted on it, so it needs examples inside and outside the subset).
        train_config: epochs, optimiser, batch size... An epoch is one pass over S's examples.
        spec_config: share, alpha, temperature, freeze_body, jitter.
        run_dir: the shared loop's folder (checkpoints, ``metrics.jsonl``, resume).
        device: "auto", "cpu" or "cuda".
        progress: progress bar (None: when on a terminal).
        desc: label of the progress bar.

    Returns:
        The :class:`Specialist`, its dustbin correction already added to the head's dustbin bias.

    Raises:
        ValueError: a bad subset or config, no training example of the subset, or (alpha > 0) a
            validation split without examples of the subset or of the rest (checked before
            training).
    """
    cfg = (spec_config or SpecialistConfig()).validate()
    subset = _check_subset(subset, splits.n_classes)
    dev = resolve_device(device)
    n_out = _head(generalist).out_features
    if n_out != splits.n_classes:
        raise ValueError(
            f"the generalist has {n_out} outputs but data set {splits.name!r} has "
            f"{splits.n_classes} classes"
        )

    model = build_specialist(
        generalist, subset, anchor_x=splits.x_train if cfg.anchor_dustbin else None
    )
    frozen_hook = None
    if cfg.freeze_body:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("head."))
        frozen_hook = model.register_forward_pre_hook(_keep_children_in_eval)

    y = splits.y_train
    mask = torch.isin(y, torch.tensor(subset, dtype=y.dtype))  # (N,) the subset's examples
    if not mask.any():
        raise ValueError(f"subset {subset} has no examples in the training data")
    val_targets = specialist_targets(splits.y_val, subset) if len(splits.y_val) else None
    if cfg.alpha > 0 or cfg.calibration == "vector":
        _check_calibration_split(val_targets, subset, vector=cfg.calibration == "vector")
    batches = MixedBatches(
        splits.x_train,
        y,
        mask,
        share=cfg.share,
        batch_size=train_config.batch_size,
        jitter=cfg.jitter,
    )
    targets = specialist_targets(y, subset).to(dev)  # (N,)
    online = cfg.alpha > 0 and cfg.jitter > 0
    folded = gen_online = None
    if online:
        gen_online = copy.deepcopy(generalist).to(dev).eval()
    elif cfg.alpha > 0:
        # the generalist's view of every training input, computed once and indexed by batch.idx
        logits = predict_logits(generalist, splits.x_train, device=dev)  # (N, C)
        folded = fold_logits(logits, subset, cfg.temperature).to(dev)  # (N, |S|+1)
    objective = specialist_objective(
        targets, folded, cfg, generalist=gen_online, subset=subset if online else None
    )
    val = None if val_targets is None else (splits.x_val, val_targets)

    extra = {
        "data": splits.fingerprint(),
        "generalist": teachers_fingerprint([generalist]),
        "subset": subset,
        "specialist": dataclasses.asdict(cfg),
        "spec": model.spec,
    }
    try:
        result = train(
            model,
            batches,
            train_config,
            objective=objective,
            val=val,
            run_dir=run_dir,
            device=dev,
            progress=progress,
            desc=desc or f"specialist {subset}",
            extra_state=extra,
            distributed=False,  # under torchrun specialists are shared out whole across ranks
        )
    finally:
        if frozen_hook is not None:
            frozen_hook.remove()
    model = result.model
    for p in model.parameters():
        p.requires_grad_(True)

    if cfg.calibration == "vector":  # every bias refitted: no dustbin shift first
        return calibrate_specialist(Specialist(model.eval(), subset, 0.0, result.history),
                                    splits.x_val, splits.y_val, device=dev)
    # The mix shows the dustbin less often than nature does: shift its prior back (DESIGN.md 3).
    if cfg.alpha == 0:
        natural = float((~mask).double().mean())
        correction = dustbin_log_correction(natural, 1.0 - batches.training_share)
        how = PRIOR_SHIFT
    else:
        logits = predict_logits(model, splits.x_val, device=dev)  # (N_val, |S|+1)
        correction = fit_dustbin_correction(logits, val_targets)
        how = FITTED
    with torch.no_grad():
        model.head.bias[-1] += correction
    return Specialist(model.eval(), subset, correction, result.history, calibration=how)


def calibrate_specialist(specialist: Specialist, x_val: torch.Tensor, y_val: torch.Tensor, *,
                         device: str | torch.device = "cpu") -> Specialist:
    """The specialist with a temperature and a bias per output fitted on natural held-out data
    (:func:`specialists.calibration.fit_vector_scaling`) and folded into its head.

    The fit is invariant to what the head's biases held before (a prior shift, an earlier
    calibration), so calibrating twice gives the same outputs as once (up to the optimiser's
    tolerance).

    Args:
        specialist: a trained specialist (its model is not changed; a calibrated copy is made).
        x_val: (N, *input_shape) held-out inputs in their natural class proportions.
        y_val: (N,) their labels in the full problem.
        device: where to run the model.

    Returns:
        A new :class:`Specialist`: ``calibration`` ``"vector_scaling_on_validation"``,
        ``temperature`` the fitted T, ``dustbin_correction`` the dustbin's fitted bias against
        the subset's (nats, after the division by T).

    Raises:
        ValueError: no held-out example of the subset or none outside it, or logits without
            signal there.
    """
    subset = list(specialist.subset)
    targets = specialist_targets(y_val, subset)
    _check_calibration_split(targets, subset, vector=True)
    logits = predict_logits(specialist.model, x_val, device=resolve_device(device))
    scale, bias = fit_vector_scaling(logits, targets)
    model = copy.deepcopy(specialist.model).eval()
    head = _head(model)
    with torch.no_grad():
        head.weight.mul_(scale)
        head.bias.mul_(scale).add_(torch.as_tensor(bias, dtype=head.bias.dtype,
                                                   device=head.bias.device))
    return dataclasses.replace(specialist, model=model, dustbin_correction=float(bias[-1]),
                               calibration=VECTOR, temperature=1.0 / scale)


def _check_calibration_split(val_targets: torch.Tensor | None, subset: list[int], *,
                             vector: bool) -> None:
    """A calibration fitted on the validation split (alpha > 0, or vector scaling when
    ``vector``) needs both kinds of example there."""
    what = ("the calibration (vector scaling) is" if vector
            else "the dustbin correction (alpha > 0) is")
    fix = "calibration 'auto'" if vector else "alpha = 0"
    if val_targets is None or not (val_targets < len(subset)).any():
        raise ValueError(
            f"the validation split has no example of subset {subset}: {what} "
            f"fitted on it; use a larger validation split or {fix}"
        )
    if not (val_targets == len(subset)).any():
        raise ValueError(
            f"the validation split has no example outside subset {subset}: {what} "
            f"fitted on it; use a larger validation split or {fix}"
        )
