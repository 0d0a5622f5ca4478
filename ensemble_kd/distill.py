"""Distillation: train a student on soft targets from cached (default) or online teachers.

The student is trained by the shared loop in :mod:`ensemble_kd.train`; this module only supplies the
objective, which looks the teachers' logits for each batch up in a :class:`~ensemble_kd.cache.TeacherCache`
(by the batch's positions in the transfer set) or runs the teachers on the batch (needed when the
inputs are augmented, since cached logits describe the un-augmented inputs).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import distributed as dist
from .batching import Batch, TensorBatches
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


@dataclass
class DistillConfig:
    """How the student learns from the teachers (Hinton et al. 2015, sections 2 and 3)."""

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
    """
    n, c = cache.n_examples, cache.n_classes
    t = cfg.temperature

    def targets_of(v: torch.Tensor) -> SoftTargets:
        return combined_soft_targets(v, t, combine=cfg.combine, teacher_weights=cfg.teacher_weights)

    def loss(logits: torch.Tensor, targets: SoftTargets, batch: Batch) -> LossParts:
        return loss_from_soft_targets(logits, targets, batch.y, temperature=t, alpha=cfg.alpha)

    if n * (c + 1) * 4 > max_resident_bytes:

        def streaming(logits: torch.Tensor, batch: Batch) -> LossParts:
            v = cache.batch(batch.idx).to(logits.device, non_blocking=True)  # (K, B, C)
            return loss(logits, targets_of(v), batch)

        return streaming

    probs, neg_entropy = torch.empty(n, c), torch.empty(n)
    for i in range(0, n, 8192):
        part = targets_of(cache.batch(np.arange(i, min(n, i + 8192))))
        probs[i : i + 8192], neg_entropy[i : i + 8192] = part.probs, part.neg_entropy
    on_device: dict[torch.device, SoftTargets] = {}

    def resident(logits: torch.Tensor, batch: Batch) -> LossParts:
        dev = logits.device
        if dev not in on_device:
            on_device[dev] = SoftTargets(probs.to(dev), neg_entropy.to(dev))
        full = on_device[dev]
        i = batch.idx.to(dev)
        return loss(logits, SoftTargets(full.probs[i], full.neg_entropy[i]), batch)

    return resident


def online_objective(teachers: Sequence[nn.Module], cfg: DistillConfig) -> Objective:
    """Distillation objective running every teacher (eval mode, no grad) on each batch's inputs."""
    for t in teachers:
        t.eval()

    def objective(logits: torch.Tensor, batch: Batch) -> LossParts:
        with torch.no_grad():
            v = torch.stack([t(batch.x) for t in teachers])  # (K, B, C)
        return distillation_loss_parts(
            logits, v, batch.y, temperature=cfg.temperature, alpha=cfg.alpha,
            combine=cfg.combine, teacher_weights=cfg.teacher_weights,
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
) -> TrainResult:
    """Distil ``teachers`` into ``student`` on the transfer set.

    Args:
        student: the model to train (its current weights are the start).
        teachers: K trained models with the student's number of classes.
        transfer: transfer set; its labels (if any) feed the hard term with weight 1 - alpha.
        train_config: optimiser, epochs, batch size... (as for the teachers).
        distill_config: temperature, alpha, combine mode, teacher weights, cache settings.
        val: validation (x, y) evaluated each epoch.
        run_dir: checkpoints and ``metrics.jsonl``; the cache goes to ``run_dir/cache`` by default.
        cache_dir: where to keep the teacher cache (overrides the default).
        device: "auto", "cpu" or "cuda".
        progress: show a progress bar (None: when on a terminal).
    """
    cfg = (distill_config or DistillConfig()).validate(len(teachers))
    n_classes = check_compatible(teachers, student, transfer.x)
    y = transfer.y
    if y is not None and len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(  # checked once here: the cached objective does not re-check each step
            f"transfer-set labels out of range: values must lie in [0, {n_classes - 1}], found "
            f"[{int(y.min())}, {int(y.max())}]"
        )
    batches = TensorBatches(
        transfer.x, transfer.y, batch_size=train_config.batch_size, jitter=cfg.jitter
    )
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
                device=device,
            )
        dist.barrier()
        if not dist.is_main():
            cache = open_cache(cache_dir)
        objective = cached_objective(cache, cfg)
        source = cache.fingerprint
    extra = {
        "distill": {k: v for k, v in vars(cfg).items() if k != "extra"},
        "teachers": source,
        "transfer": inputs_fingerprint(transfer.x)
        + ("" if transfer.y is None else inputs_fingerprint(transfer.y)),
    }
    try:
        return train(
            student, batches, train_config, objective=objective, val=val, run_dir=run_dir,
            device=device, progress=progress, desc="distill", extra_state=extra,
        )
    finally:
        if tmp is not None:
            tmp.cleanup()
