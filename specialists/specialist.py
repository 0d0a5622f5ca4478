"""Dustbin specialists: build one from the generalist, train it, save, load and predict.

A specialist for subset ``S`` (Hinton, Vinyals & Dean 2015, sec. 5) starts as a copy of the
generalist whose head is cut down to ``len(S) + 1`` outputs: the classes of ``S`` in the order
given, then one *dustbin* class for every other class. It is trained by the shared loop
(:func:`ensemble_kd.train.train`) on batches of which ``share`` (default half) come from ``S``, with
the generalist's soft targets folded into ``S`` + dustbin guarding it against overfitting. Because
the mix shifts the class prior, a correction is added to the dustbin bias after training
(:mod:`specialists.calibration`): the closed-form prior shift for hard labels (``alpha = 0``), a
bias fitted on the natural validation split otherwise. The saved model's logits are calibrated
for data in its natural proportions.

Folder layout written by :func:`train_specialists`::

    out_dir/subsets.json              the subsets, their class names, the data fingerprint
    out_dir/specialist_<m>/model.pt   the trained specialist (dustbin correction included)
    out_dir/specialist_<m>/checkpoint.pt, metrics.jsonl   the shared loop's run folder
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ensemble_kd.batching import Batch, MixedBatches
from ensemble_kd.cache import teachers_fingerprint
from ensemble_kd.checkpoint import load_model, save_model
from ensemble_kd.data import Splits
from ensemble_kd.ensemble import data_meta
from ensemble_kd.io import FormatError, atomic_write_json, read_json
from ensemble_kd.losses import LossParts, distillation_loss_parts, hard_loss
from ensemble_kd.models import replace_head
from ensemble_kd.predict import predict_logits, resolve_device
from ensemble_kd.train import Objective, TrainConfig, train

from .calibration import dustbin_log_correction, fit_dustbin_correction
from .subsets import (
    fold_logits,
    specialist_targets,
    validate_subsets,
)

SUBSETS_FILE = "subsets.json"
PRIOR_SHIFT = "prior_shift"  # closed-form dustbin correction (alpha = 0)
FITTED = "fitted_on_validation"  # dustbin bias fitted on the natural validation split


@dataclass
class SpecialistConfig:
    """How a specialist is trained (on top of the shared ``ensemble_kd.train.TrainConfig``)."""

    share: float = 0.5  # share of each batch drawn from the subset's classes; the paper used half
    alpha: float = 0.5  # weight of the generalist's folded soft targets; 0 = hard labels only
    temperature: float = 2.0  # T of those soft targets (the specialist still predicts at T = 1)
    freeze_body: bool = False  # train only the head (the body stays the generalist's, in eval mode)
    jitter: int = 0  # random input shifts in pixels; with alpha > 0 the generalist then runs online
    anchor_dustbin: bool = (
        True  # start the dustbin logit as the tangent at the mean training feature
    )

    def validate(self) -> SpecialistConfig:
        if not 0.0 < self.share < 1.0:
            raise ValueError(f"share must lie strictly between 0 and 1, got {self.share}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")
        if self.jitter < 0:
            raise ValueError(f"jitter must be >= 0 pixels, got {self.jitter}")
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
        calibration: how ``dustbin_correction`` was found: ``"prior_shift"`` or
            ``"fitted_on_validation"``.
    """

    model: nn.Module
    subset: list[int]
    dustbin_correction: float
    history: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    calibration: str = PRIOR_SHIFT


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
    if cfg.alpha > 0:
        _check_calibration_split(val_targets, subset)
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


def _check_calibration_split(val_targets: torch.Tensor | None, subset: list[int]) -> None:
    """With alpha > 0 the dustbin bias is fitted on the validation split: it needs both kinds."""
    if val_targets is None or not (val_targets < len(subset)).any():
        raise ValueError(
            f"the validation split has no example of subset {subset}: the dustbin correction "
            "(alpha > 0) is fitted on it; use a larger validation split or alpha = 0"
        )
    if not (val_targets == len(subset)).any():
        raise ValueError(
            f"the validation split has no example outside subset {subset}: the dustbin "
            "correction (alpha > 0) is fitted on it; use a larger validation split or alpha = 0"
        )


def save_specialist(
    path: str | os.PathLike, specialist: Specialist, meta: dict | None = None
) -> None:
    """Save a specialist (weights with the correction, subset, correction, history) atomically.

    Args:
        path: destination ``.pt`` file.
        specialist: what to save; its ``meta`` is stored too, updated by ``meta``.
        meta: JSON-able facts (data fingerprint, class names, generalist fingerprint, ...).
    """
    full = {
        **specialist.meta,
        **(meta or {}),
        "role": "specialist",
        "subset": [int(c) for c in specialist.subset],
        "dustbin_correction": float(specialist.dustbin_correction),
        "dustbin_calibration": specialist.calibration,
        "history": specialist.history,
    }
    save_model(path, specialist.model, full)


def load_specialist(path: str | os.PathLike, device: str | torch.device = "cpu") -> Specialist:
    """Load a specialist saved by :func:`save_specialist`, in eval mode.

    Raises:
        FileNotFoundError: no such file.
        FormatError: not a model file, no valid subset or correction in its metadata, or a head
            whose size is not ``len(subset) + 1``.
    """
    model, meta = load_model(path, device)
    subset = meta.get("subset")
    if not (
        isinstance(subset, list)
        and subset
        and all(isinstance(c, int) and not isinstance(c, bool) for c in subset)
    ):
        raise FormatError(f"{path}: not a specialist (its metadata has no list of subset classes)")
    c = meta.get("dustbin_correction")
    if isinstance(c, bool) or not isinstance(c, numbers.Real) or not math.isfinite(c):
        raise FormatError(f"{path}: not a specialist (dustbin_correction is {c!r})")
    head = getattr(model, "head", None)
    n_out = head.out_features if isinstance(head, nn.Linear) else None
    if n_out != len(subset) + 1:
        raise FormatError(
            f"{path}: the head has {n_out} outputs but the subset has {len(subset)} classes "
            f"(expected {len(subset) + 1} with the dustbin)"
        )
    # Files written before the calibration was recorded used a (wrong) closed form.
    how = str(meta.get("dustbin_calibration", "unrecorded"))
    return Specialist(model, list(subset), float(c), list(meta.get("history", [])), meta, how)


def specialist_dir(out_dir: str | os.PathLike, m: int) -> Path:
    return Path(out_dir) / f"specialist_{m}"


def train_specialists(
    generalist: nn.Module,
    subsets: Sequence[Sequence[int]],
    splits: Splits,
    train_config: TrainConfig,
    spec_config: SpecialistConfig | None,
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    ranks: tuple[int, int] = (0, 1),
) -> list[Specialist]:
    """Train one specialist per subset, each independently in ``out_dir/specialist_<m>/``.

    Resumable: a specialist whose ``model.pt`` exists is loaded (after checking that it belongs to
    this subset, data and generalist), an interrupted one continues from its checkpoint.

    Args:
        generalist: the trained generalist.
        subsets: M class subsets (may overlap).
        splits: the data the generalist was trained on.
        train_config, spec_config: as for :func:`train_specialist` (same for every specialist).
        out_dir: receives ``subsets.json`` and ``specialist_<m>/``.
        device, progress: as for :func:`ensemble_kd.train.train`.
        ranks: (rank, world size): this process trains specialists m with m % world == rank.

    Returns:
        This process's specialists (all M when world size is 1), in subset order.
    """
    cfg = (spec_config or SpecialistConfig()).validate()
    subsets = validate_subsets(subsets, splits.n_classes)
    rank, world = ranks
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"ranks must be (rank, world) with 0 <= rank < world, got {ranks}")
    out = Path(out_dir)
    base = data_meta(splits)
    gen_fp = teachers_fingerprint([generalist])
    names = splits.class_names
    manifest = {
        "subsets": subsets,
        "subset_names": [[names[c] for c in s] for s in subsets],
        "class_names": list(names),
        "n_classes": splits.n_classes,
        "dataset": splits.name,
        "data_fingerprint": base["data_fingerprint"],
        "generalist_fingerprint": gen_fp,
    }
    manifest_path = out / SUBSETS_FILE
    if manifest_path.exists():
        old = read_json(manifest_path)
        for key in ("subsets", "data_fingerprint", "generalist_fingerprint"):
            if old.get(key) != manifest[key]:
                raise ValueError(
                    f"{manifest_path} belongs to a run with other {key.replace('_', ' ')}; "
                    "use a new output folder"
                )
    if rank == 0:  # one writer of the shared manifest under torchrun
        atomic_write_json(manifest_path, manifest)

    result = []
    for m, subset in enumerate(subsets):
        if m % world != rank:
            continue
        folder = specialist_dir(out, m)
        path = folder / "model.pt"
        if path.exists():
            sp = load_specialist(path, device)
            _check_resumed(path, sp, subset, base["data_fingerprint"], gen_fp)
            result.append(sp)
            continue
        sp = train_specialist(
            generalist,
            subset,
            splits,
            train_config,
            cfg,
            run_dir=folder,
            device=device,
            progress=progress,
            desc=f"specialist {m + 1}/{len(subsets)}",
        )
        sp.meta = {
            **base,
            "generalist_fingerprint": gen_fp,
            "index": m,
            "subset_names": [names[c] for c in subset],
            "specialist_config": dataclasses.asdict(cfg),
            "train_config": dataclasses.asdict(train_config),
        }
        save_specialist(path, sp)
        result.append(sp)
    return result


def _check_resumed(
    path: Path, sp: Specialist, subset: list[int], data_fp: str, gen_fp: str
) -> None:
    if sp.subset != subset:
        raise ValueError(f"{path} is a specialist for {sp.subset}, not {subset}; use a new folder")
    if sp.meta.get("data_fingerprint") != data_fp:
        raise ValueError(f"{path} was trained on other data; use a new folder")
    if sp.meta.get("generalist_fingerprint") != gen_fp:
        raise ValueError(f"{path} was trained from another generalist; use a new folder")


def load_specialists(
    out_dir: str | os.PathLike, device: str | torch.device = "cpu"
) -> list[Specialist]:
    """Load every specialist that :func:`train_specialists` wrote to ``out_dir``, in subset order.

    Raises:
        FileNotFoundError: no ``subsets.json`` or a specialist's ``model.pt`` is missing.
        FormatError: a specialist's subset differs from the one in ``subsets.json``.
    """
    out = Path(out_dir)
    if not (out / SUBSETS_FILE).exists():
        raise FileNotFoundError(
            f"{out}: no {SUBSETS_FILE} (not a folder written by train_specialists)"
        )
    subsets = read_json(out / SUBSETS_FILE).get("subsets")
    if not isinstance(subsets, list) or not subsets:
        raise FormatError(f"{out / SUBSETS_FILE}: no subsets listed")
    specialists = []
    for m, subset in enumerate(subsets):
        path = specialist_dir(out, m) / "model.pt"
        if not path.exists():
            raise FileNotFoundError(f"{path}: specialist {m} has not been trained (yet)")
        sp = load_specialist(path, device)
        if sp.subset != subset:
            raise FormatError(f"{path}: subset {sp.subset} differs from {subset} in {SUBSETS_FILE}")
        specialists.append(sp)
    return specialists


def specialist_probs(
    specialists: Sequence[Specialist],
    x: torch.Tensor,
    device: str | torch.device | None = None,
) -> list[torch.Tensor]:
    """Each specialist's probabilities on ``x`` (softmax of the corrected logits, T = 1).

    Args:
        specialists: M specialists.
        x: (N, *input_shape) inputs.
        device: where to run (the models are moved there); default each model's device.

    Returns:
        M float32 CPU tensors, the m-th (N, |S_m| + 1) with the dustbin last.
    """
    out = []
    dev = None if device is None else resolve_device(device)
    for m, sp in enumerate(specialists):
        model = sp.model if dev is None else sp.model.to(dev)
        logits = predict_logits(model, x, device=dev)  # (N, |S_m|+1)
        if logits.shape[-1] != len(sp.subset) + 1:
            raise ValueError(
                f"specialists[{m}] has {logits.shape[-1]} outputs but its subset has "
                f"{len(sp.subset)} classes (expected {len(sp.subset) + 1})"
            )
        out.append(torch.softmax(logits, dim=-1))
    return out
