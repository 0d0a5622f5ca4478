"""Distillation settings chosen on validation data: train one candidate student per setting, keep the best.

Whether distillation helps depends on the temperature T and the soft-term weight alpha (a setting
that helps one student hurts another), so they are chosen the way any hyperparameter is: every
candidate (T, alpha) trains from the same initial weights, on the same teacher cache (computed
once), for the same budget; the one with the highest validation accuracy is kept (ties: lower
validation NLL, then the earlier candidate). Each candidate is its own run folder, so an
interrupted sweep resumes where it stopped: finished candidates are loaded, the interrupted one
continues from its checkpoint.

Layout under ``run_dir``::

    cache/                     the teachers' cached logits, shared by every candidate
    candidates/T4-a0.5/        one run folder per candidate (model.pt, checkpoint.pt, metrics.jsonl)
    model.pt                   the kept candidate (written by the caller)

With a single candidate nothing is swept and the student trains in ``run_dir`` itself (the layout
of ensemble-kd 0.1.0).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from . import distributed as dist
from .data import TransferSet
from .distill import DistillConfig, distill
from .predict import predict_logits
from .run import Run
from .train import TrainConfig, evaluate_logits

# The documented ``auto`` grid (``--temperature auto``, ``--alpha auto``): the temperatures the paper
# found best for small and large students (2.5-4 for 30 units per layer, >= 8 for 300+), and soft
# weights from an even mix to nearly pure soft targets. alpha > 0 only: alpha = 0 is the baseline.
AUTO_TEMPERATURES = (1.0, 2.0, 4.0, 8.0)
AUTO_ALPHAS = (0.5, 0.9)


class Candidate(NamedTuple):
    """One distillation setting and how its student did on the validation split."""

    temperature: float
    alpha: float
    val_acc: float  # fraction of the validation split
    val_nll: float  # nats per example
    folder: str  # the candidate's run folder


class SweepResult(NamedTuple):
    model: nn.Module  # the kept candidate's student, eval mode
    best: int  # index of the kept candidate in ``candidates``
    candidates: list[Candidate]


def resolve_grid(values: Sequence[float] | str, auto: Sequence[float], name: str) -> list[float]:
    """The candidate values of one setting: the given list, or the ``auto`` grid.

    Raises:
        ValueError: an empty list or a repeated value, naming the setting.
    """
    if isinstance(values, str):
        if values != "auto":
            raise ValueError(f"{name} must be numbers or 'auto', got {values!r}")
        return [float(v) for v in auto]
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"{name} needs at least one value")
    repeated = sorted({v for v in out if out.count(v) > 1})
    if repeated:
        raise ValueError(f"{name} lists {', '.join(f'{v:g}' for v in repeated)} more than once")
    return out


def candidate_configs(
    base: DistillConfig,
    temperatures: Sequence[float] = AUTO_TEMPERATURES,
    alphas: Sequence[float] = AUTO_ALPHAS,
) -> list[DistillConfig]:
    """Every (T, alpha) pair as a config (T varies slowest); checked, alpha > 0 in a sweep.

    The default grids are the CLI's defaults (``--temperature auto --alpha auto``), so
    ``distill_sweep(..., candidate_configs(DistillConfig()), ...)`` is what ``run`` does."""
    configs = [dataclasses.replace(base, temperature=t, alpha=a) for t in temperatures for a in alphas]
    if len(configs) > 1 and any(c.alpha == 0 for c in configs):
        raise ValueError("alpha = 0 trains on hard labels alone (that is the baseline): a "
                         "distillation sweep needs alpha > 0")
    for c in configs:
        c.validate()
    return configs


def without_labels(configs: Sequence[DistillConfig]) -> list[DistillConfig]:
    """The candidates that differ on a transfer set without labels: alpha only weighs the hard
    term, so candidates that differ in alpha alone would train the same student. Keeps one per
    other setting, the one with the largest alpha (nearest to the loss actually used)."""
    keys: list[DistillConfig] = []  # the configs with alpha blanked (unhashable: compared by ==)
    kept: list[DistillConfig] = []
    for cfg in configs:
        key = dataclasses.replace(cfg, alpha=0.0)
        if key in keys:
            i = keys.index(key)
            kept[i] = cfg if cfg.alpha > kept[i].alpha else kept[i]
        else:
            keys.append(key)
            kept.append(cfg)
    return kept


def candidate_name(cfg: DistillConfig) -> str:
    """The folder name of a candidate: ``T4-a0.5``."""
    return f"T{cfg.temperature:g}-a{cfg.alpha:g}"


def best_candidate(candidates: Sequence[Candidate]) -> int:
    """Index of the highest validation accuracy; ties go to lower NLL, then the earlier one."""
    return min(range(len(candidates)),
               key=lambda i: (-candidates[i].val_acc, candidates[i].val_nll, i))


def distill_sweep(
    make_student: Callable[[], nn.Module],
    teachers: Sequence[nn.Module],
    transfer: TransferSet,
    train_config: TrainConfig,
    configs: Sequence[DistillConfig],
    *,
    val: tuple[torch.Tensor, torch.Tensor],
    run_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    say: Callable[[str], None] | None = None,
    allow_imports: Collection[str] = (),
) -> SweepResult:
    """Distil one student per config (same initial weights, one shared cache), keep the best.

    Args:
        make_student: builds the student with its initial weights (called once per candidate; it
            must give the same weights every time, e.g. by seeding inside).
        teachers, transfer, train_config: as for :func:`ensemble_kd.distill.distill`.
        configs: the candidates (:func:`candidate_configs`); one config means no sweep. Without
            labels in ``transfer``, candidates that differ in alpha alone are one
            (:func:`without_labels`).
        val: (x (M, ...), y (M,)) on which the candidates are compared.
        run_dir: the sweep's folder (layout in the module docstring).
        cache_dir: the teachers' cache (default ``run_dir/cache``); sweeps of other students
            from the same teachers and transfer set may share one.
        device, progress: as for ``distill``.
        say: where to report each candidate's validation result (e.g. ``print``).
        allow_imports: modules a finished candidate's spec may import (see ``load_model``).

    Returns:
        :class:`SweepResult` with the kept student and every candidate's validation scores.
    """
    if not configs:
        raise ValueError("no distillation settings to try")
    if transfer.y is None:
        configs = without_labels(configs)
    run_dir = Path(run_dir)
    cache_dir = run_dir / "cache" if cache_dir is None else Path(cache_dir)
    single = len(configs) == 1
    candidates, models = [], []
    for cfg in configs:
        folder = run_dir if single else run_dir / "candidates" / candidate_name(cfg)
        done = None if single else Run(folder).load_finished(device, allow_imports=allow_imports)
        if done is not None:
            model = done[0]
        else:
            model = distill(make_student(), teachers, transfer, train_config, cfg, val=val,
                            run_dir=folder, cache_dir=cache_dir, device=device,
                            progress=progress).model
            if not single:
                meta = {"role": "candidate", "temperature": cfg.temperature, "alpha": cfg.alpha}
                Run(folder, writer=dist.is_main()).finish(model, meta)
        v = evaluate_logits(predict_logits(model, val[0], device=device), val[1].cpu())
        candidates.append(Candidate(cfg.temperature, cfg.alpha, v["acc"], v["nll"], str(folder)))
        models.append(model)
        if say is not None and not single:
            say(f"candidate T={cfg.temperature:g}, alpha={cfg.alpha:g}: validation accuracy "
                f"{100 * v['acc']:.2f}%, NLL {v['nll']:.4f}")
    best = best_candidate(candidates)
    return SweepResult(models[best], best, candidates)
