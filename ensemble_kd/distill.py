"""Distillation: train a student on soft targets from cached (default) or online teachers.

The student is trained by the shared loop in :mod:`ensemble_kd.train`; this module only supplies the
objective, which looks the teachers' logits for each batch up in a :class:`~ensemble_kd.cache.TeacherCache`
(by the batch's positions in the transfer set, and view numbers for augmented views) or runs the
teachers on the batch (online: needed for unbounded views and the legacy ``jitter``).

Augmented views (:mod:`ensemble_kd.views`, ``DistillConfig.views``) are the same for the teachers
and the student: a view is regenerated from its key, so the cached logits of (example, view) belong
to exactly the input the student sees. :func:`train_baseline` trains the fair hard-label baseline on
those same inputs (same views, same seed, same budget, mixed labels), so that a gain over it is the
distillation's alone.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import distributed as dist
from .batching import Batch, BatchSource, TensorBatches, ViewBatches
from .cache import TeacherCache, ensure_cache, inputs_fingerprint, open_cache, teachers_fingerprint
from .data import TransferSet
from .losses import (
    COMBINE_MODES,
    LossParts,
    SoftTargets,
    combined_soft_targets,
    distillation_loss_parts,
    loss_from_soft_targets,
)
from .predict import resolve_device
from .train import Objective, TrainConfig, TrainResult, train
from .views import ViewConfig


@dataclass
class DistillConfig:
    """How the student learns from the teachers (Hinton et al. 2015, sections 2 and 3)."""

    # one run's T and alpha, one pair of the CLI's default grids; ``sweep.candidate_configs(cfg)``
    # gives all of them (T 1 2 4 8 x alpha 0.5 0.9), as ``run`` trains them
    temperature: float = 4.0  # T of the soft targets; the saved student predicts at T = 1
    alpha: float = 0.9  # weight of the soft term; 1 - alpha weighs the hard labels (if any)
    combine: str = "sum"  # "sum" (per-teacher KL, the multi-task loss), "mean_probs", "mean_logits"
    teacher_weights: list[float] | None = None  # one weight per teacher, normalised; None = uniform
    online: bool = False  # run the teachers every step instead of reading the cache
    cache_dtype: str = "float32"  # "float32" or "float16" storage of cached logits
    # 0 = dense cache; k > 0 keeps each example's k largest logits and one residual for the rest,
    # which gives the dropped classes their true total probability at T = 1 only: T must be 1
    cache_topk: int = 0
    jitter: int = 0  # random input shifts in pixels during distillation (requires online=True)
    # augmented views seen by teachers and student alike (cached per view, or online); None = the
    # transfer set as it is. Prefer views.shift to jitter: a view can be cached and regenerated
    views: ViewConfig | None = None
    extra: dict = field(default_factory=dict)  # free-form notes saved with the run

    def validate(self, n_teachers: int | None = None) -> DistillConfig:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {', '.join(COMBINE_MODES)}, got {self.combine!r}")
        if self.cache_dtype not in ("float16", "float32"):
            raise ValueError(f"cache_dtype must be float16 or float32, got {self.cache_dtype!r}")
        if self.cache_topk < 0:
            raise ValueError(f"cache_topk must be >= 0, got {self.cache_topk}")
        if self.cache_topk and not self.online and self.temperature != 1:
            raise ValueError(
                f"a top-k teacher cache (cache_topk={self.cache_topk}) keeps the dropped classes' "
                f"probability right at temperature 1 only, not at T={self.temperature:g}: use a "
                "dense cache (cache_topk 0), temperature 1, or online teachers"
            )
        if self.jitter and not self.online:
            raise ValueError(
                "jitter changes the inputs at every step, so cached teacher logits would not match "
                "them: distil with online teachers (online=True / --online) to use jitter"
            )
        if self.views is not None:
            if not isinstance(self.views, ViewConfig):
                raise ValueError(f"views must be a ViewConfig or None, got {type(self.views).__name__}")
            self.views.validate()
            if self.jitter and self.views.augments:
                raise ValueError("jitter and views both augment the inputs: use views.shift instead "
                                 "of jitter")
            if self.views.views is None and not self.online:
                raise ValueError("unbounded views (views=None) cannot be cached: give the number of "
                                 "views V to cache, or distil with online teachers")
        if self.teacher_weights is not None:
            w = list(self.teacher_weights)
            if n_teachers is not None and len(w) != n_teachers:
                raise ValueError(f"teacher_weights has {len(w)} entries but there are {n_teachers} teachers")
            if any((not math.isfinite(v)) or v < 0 for v in w):
                raise ValueError("teacher_weights must be finite and non-negative")
            if sum(w) <= 0:
                raise ValueError("teacher_weights must not all be zero")
        return self


def cached_objective(
    cache: TeacherCache, cfg: DistillConfig, *, max_resident_bytes: int = 256 * 2**20
) -> Objective:
    """Distillation objective reading the teachers' outputs for each batch from ``cache``.

    The teachers' side of the loss (:func:`~ensemble_kd.losses.combined_soft_targets`) needs no
    gradient, so when the combined targets of the whole transfer set fit in ``max_resident_bytes``
    they are computed once, kept on the training device, and each step only slices them. Larger
    caches are combined batch by batch as they stream from disk. The cache's logits were checked
    finite when it was written, so no step re-validates them.

    A view cache (``cfg.views``) is read at row ``(batch.view, batch.idx)``; the cache must hold
    the views ``cfg.views`` asks for.

    Raises:
        ValueError: the cache holds other views than ``cfg.views`` (or plain inputs for views).
    """
    n, c = cache.n_examples, cache.n_classes
    t = cfg.temperature
    views = None if cfg.views is None or cfg.views.plain else cfg.views.as_dict()
    if cache.meta.get("views") != views:
        raise ValueError(f"{cache.folder}: the cache holds the teachers' logits for other views "
                         f"({cache.meta.get('views') or 'the plain inputs'}) than the distillation's "
                         f"({views or 'the plain inputs'})")

    def rows(batch: Batch) -> torch.Tensor:
        if views is None:
            return batch.idx
        if batch.view is None:
            raise ValueError("a view cache needs batches with view numbers (ViewBatches)")
        return cache.rows(batch.idx, batch.view)  # (B,) row view * N + idx

    def targets_of(v: torch.Tensor) -> SoftTargets:
        return combined_soft_targets(v, t, combine=cfg.combine, teacher_weights=cfg.teacher_weights)

    def loss(logits: torch.Tensor, targets: SoftTargets, batch: Batch) -> LossParts:
        return loss_from_soft_targets(logits, targets, batch.y, temperature=t, alpha=cfg.alpha,
                                      mix=batch.mix)

    if n * (c + 1) * 4 > max_resident_bytes:

        def streaming(logits: torch.Tensor, batch: Batch) -> LossParts:
            v = cache.batch(rows(batch)).to(logits.device, non_blocking=True)  # (K, B, C)
            return loss(logits, targets_of(v), batch)

        return streaming

    # one table (N, C + 1): the targets and, in the last column, the constant of each row, so a
    # step reads both with one row copy
    table = torch.empty(n, c + 1)
    for i in range(0, n, 8192):
        part = targets_of(cache.batch(np.arange(i, min(n, i + 8192))))
        table[i : i + 8192, :c], table[i : i + 8192, c] = part.probs, part.neg_entropy
    on_device: dict[torch.device, torch.Tensor] = {}

    def resident(logits: torch.Tensor, batch: Batch) -> LossParts:
        dev = logits.device
        if dev not in on_device:
            on_device[dev] = table.to(dev)
        got = on_device[dev].index_select(0, rows(batch).to(dev))  # (B, C + 1)
        return loss(logits, SoftTargets(got[:, :c], got[:, c]), batch)

    return resident


def online_objective(teachers: Sequence[nn.Module], cfg: DistillConfig) -> Objective:
    """Distillation objective running every teacher (eval mode, no grad) on each batch's inputs
    (whatever views the student sees, the teachers see the same)."""
    for t in teachers:
        t.eval()

    def objective(logits: torch.Tensor, batch: Batch) -> LossParts:
        with torch.no_grad():
            v = torch.stack([t(batch.x) for t in teachers])  # (K, B, C)
        return distillation_loss_parts(
            logits, v, batch.y, temperature=cfg.temperature, alpha=cfg.alpha,
            combine=cfg.combine, teacher_weights=cfg.teacher_weights, mix=batch.mix,
        )

    return objective


def check_compatible(teachers: Sequence[nn.Module], student: nn.Module, x: torch.Tensor) -> int:
    """Check that teachers and student map ``x`` to the same number of classes; return it."""
    if not teachers:
        raise ValueError("distillation needs at least one teacher")
    with torch.no_grad():
        sizes = []
        for m in [*teachers, student]:
            was = m.training
            m.eval()
            dev = next(m.parameters()).device
            sizes.append(int(m(x[:2].to(dev)).shape[-1]))
            m.train(was)
    if len(set(sizes[:-1])) > 1:
        raise ValueError(f"the teachers disagree on the number of classes: {sizes[:-1]}")
    if sizes[-1] != sizes[0]:
        raise ValueError(
            f"the student has {sizes[-1]} outputs but the teachers have {sizes[0]} classes"
        )
    return sizes[0]


def _plain_as_none(views: ViewConfig | None) -> ViewConfig | None:
    """One view without augmentation is the transfer set itself: no views (today's runs)."""
    return None if views is None or views.plain else views


def transfer_batches(
    transfer: TransferSet, batch_size: int, *, views: ViewConfig | None = None, jitter: int = 0
) -> BatchSource:
    """The batches a student trains on: the transfer set's views, or the examples themselves.

    The one place that turns (views, jitter) into a batch source, so the distilled student and
    its baseline (:func:`train_baseline`) draw identical inputs from the same training seed.
    """
    views = _plain_as_none(views)
    if views is None:
        return TensorBatches(transfer.x, transfer.y, batch_size=batch_size, jitter=jitter)
    if jitter:
        raise ValueError("jitter and views both augment the inputs: use views.shift instead of jitter")
    return ViewBatches(transfer.x, transfer.y, views=views, batch_size=batch_size)


def _transfer_fingerprint(transfer: TransferSet) -> str:
    return inputs_fingerprint(transfer.x) + (
        "" if transfer.y is None else inputs_fingerprint(transfer.y))


def distill(
    student: nn.Module,
    teachers: Sequence[nn.Module],
    transfer: TransferSet,
    train_config: TrainConfig,
    distill_config: DistillConfig | None = None,
    *,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    run_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Distil ``teachers`` into ``student`` on the transfer set.

    Args:
        student: the model to train (its current weights are the start).
        teachers: K trained models with the student's number of classes.
        transfer: transfer set; its labels (if any) feed the hard term with weight 1 - alpha.
        train_config: optimiser, epochs, batch size... (as for the teachers).
        distill_config: temperature, alpha, combine mode, teacher weights, cache settings, views.
        val: validation (x, y) evaluated each epoch.
        run_dir: checkpoints and ``metrics.jsonl``; the cache goes to ``run_dir/cache`` by default.
        cache_dir: where to keep the teacher cache (overrides the default). A view cache
            (``distill_config.views``) holds V views of every example; it is rebuilt when it was
            made from other teachers, inputs or view settings.
        device: "auto", "cpu" or "cuda".
        progress: show a progress bar (None: when on a terminal).
        on_epoch_end: called with each epoch's metrics record (after its checkpoint).
    """
    cfg = (distill_config or DistillConfig()).validate(len(teachers))
    cfg = replace(cfg, views=_plain_as_none(cfg.views))  # plain views: today's run, same identity
    if cfg.views is not None:
        cfg.views.validate(tuple(transfer.x.shape[1:]))
    n_classes = check_compatible(teachers, student, transfer.x)
    y = transfer.y
    if y is not None and len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(  # checked once here: the cached objective does not re-check each step
            f"transfer-set labels out of range: values must lie in [0, {n_classes - 1}], found "
            f"[{int(y.min())}, {int(y.max())}]"
        )
    batches = transfer_batches(transfer, train_config.batch_size, views=cfg.views, jitter=cfg.jitter)
    tmp = None
    if cfg.online:
        dev = resolve_device(device)
        teachers = [t.to(dev) for t in teachers]
        objective = online_objective(teachers, cfg)
        source = "online:" + teachers_fingerprint(teachers)
    else:
        if cache_dir is None and run_dir is not None:
            cache_dir = Path(run_dir) / "cache"
        if cache_dir is None:  # nowhere to keep it: a temporary folder, removed after training
            tmp = tempfile.TemporaryDirectory(prefix="ensemble-kd-cache-")
            cache_dir = tmp.name
        if dist.is_main():  # under torchrun rank 0 writes the cache, the others read it
            cache = ensure_cache(
                teachers, transfer.x, cache_dir, dtype=cfg.cache_dtype, topk=cfg.cache_topk,
                device=device, views=cfg.views,
            )
        dist.barrier()
        if not dist.is_main():
            cache = open_cache(cache_dir)
        objective = cached_objective(cache, cfg)
        source = cache.fingerprint
    # the run's identity; a field at its default is left out, so runs from before it existed resume
    settings = {k: v for k, v in vars(cfg).items() if k not in ("extra", "views")}
    if cfg.views is not None:
        settings["views"] = cfg.views.as_dict()
    extra = {"distill": settings, "teachers": source, "transfer": _transfer_fingerprint(transfer)}
    try:
        return train(
            student, batches, train_config, objective=objective, val=val, run_dir=run_dir,
            device=device, progress=progress, desc="distill", on_epoch_end=on_epoch_end,
            extra_state=extra,
        )
    finally:
        if tmp is not None:
            tmp.cleanup()


def train_baseline(
    student: nn.Module,
    transfer: TransferSet,
    train_config: TrainConfig,
    *,
    views: ViewConfig | None = None,
    jitter: int = 0,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    run_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    extra_state: dict | None = None,
) -> TrainResult:
    """The fair hard-label baseline of a distillation: the student trained on labels alone, on the
    very inputs the distilled student sees.

    Given the distillation's ``train_config`` and its ``DistillConfig.views`` (and ``jitter``), every
    step draws the same examples in the same views (mixup/cutmix labels mixed alike) as
    :func:`distill` does, for the same epochs and budget; only the teachers' soft term is missing.
    Give the student the distilled student's initial weights, and a gain is the distillation's alone.

    Args:
        student: the model to train (its current weights are the start).
        transfer: a labelled transfer set.
        train_config: the distillation's training config (seed included).
        views: the distillation's ``DistillConfig.views``.
        jitter: the distillation's ``DistillConfig.jitter`` (legacy online shifts).
        val, run_dir, device, progress, on_epoch_end: as for :func:`distill`.
        extra_state: facts that must match on resume (default: the transfer set's fingerprint);
            the view settings are added when there are views.

    Raises:
        ValueError: an unlabelled transfer set, or views that do not fit the inputs.
    """
    if transfer.y is None:
        raise ValueError("the hard-label baseline needs a labelled transfer set")
    views = _plain_as_none(views)
    batches = transfer_batches(transfer, train_config.batch_size, views=views, jitter=jitter)
    extra = dict(extra_state) if extra_state is not None else {
        "transfer": _transfer_fingerprint(transfer)}
    if views is not None:
        extra["views"] = views.as_dict()
    if jitter:
        extra["jitter"] = int(jitter)
    return train(
        student, batches, train_config, val=val, run_dir=run_dir, device=device,
        progress=progress, desc="baseline", on_epoch_end=on_epoch_end, extra_state=extra,
    )
