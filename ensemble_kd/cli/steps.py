"""The training steps of a run: the teachers, then the hard-label baseline and the distilled student.

Each step skips work whose result is already on disk, so ``--resume`` continues a killed run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import distributed as dist
from ..batching import TensorBatches
from ..data import Splits, TransferSet
from ..distill import distill
from ..ensemble import data_meta, find_teachers, load_teachers, train_ensemble
from ..run import Run
from ..train import train
from .context import Ctx, transfer_of

VECTORIZE = {"auto": None, "on": True, "off": False}  # --teacher-vectorize -> train_ensemble's flag


def step_teachers(ctx: Ctx, splits: Splits, out: Path) -> list[torch.nn.Module]:
    """Train (or load) the ensemble in ``out/teachers``."""
    cfg = ctx.cfg
    ctx.say(f"training {cfg.teachers} teacher(s) ({cfg.teacher_arch} {cfg.teacher_widths}) on "
            f"{splits.describe()}")
    teachers = train_ensemble(
        splits, cfg.teacher_spec(), cfg.teachers, cfg.train_config(cfg.teacher_epochs),
        out / "teachers", jitter=cfg.teacher_jitter, device=ctx.device, progress=ctx.progress,
        ranks=(dist.rank(), dist.world()), vectorize=VECTORIZE[cfg.teacher_vectorize],
    )
    if dist.active():  # each rank trained its share; all of them read every teacher
        dist.barrier()
        teachers = load_teachers(find_teachers(out / "teachers"), ctx.device, splits=splits)[0]
    return teachers


def _train_student(ctx: Ctx, splits: Splits, transfer: TransferSet, folder: Path, teachers=None):
    """The baseline (teachers=None, hard labels) or the distilled student, saved in ``folder``."""
    cfg = ctx.cfg
    run = Run(folder, writer=dist.is_main())
    if (done := run.load_finished(ctx.device, expect={"data_fingerprint": splits.fingerprint()})):
        return done[0]
    torch.manual_seed(cfg.seed + 10_000)  # same initial weights for baseline and student
    student = cfg.student_spec().build(splits.input_shape, splits.n_classes)
    tcfg = cfg.train_config()
    val = (splits.x_val, splits.y_val)
    if teachers is None:
        if transfer.y is None:
            raise ValueError("the hard-label baseline needs a labelled transfer set")
        result = train(
            student, TensorBatches(transfer.x, transfer.y, batch_size=tcfg.batch_size), tcfg,
            val=val, run_dir=folder, device=ctx.device, progress=ctx.progress, desc="baseline",
            extra_state={"data": splits.fingerprint(), "transfer": transfer.indices.tolist()[:50]},
        )
        role = "baseline"
    else:
        result = distill(
            student, teachers, transfer, tcfg, cfg.distill_config(), val=val, run_dir=folder,
            device=ctx.device, progress=ctx.progress,
        )
        role = "student"
    meta = {**data_meta(splits), "role": role, "temperature": cfg.temperature if teachers else None}
    run.finish(result.model, meta)
    dist.barrier()
    return result.model


def step_students(ctx: Ctx, splits: Splits, teachers, out: Path):
    """Train (or load) the baseline in ``out/baseline`` (labelled transfer sets only) and the
    distilled student in ``out/student``; returns (baseline or None, student)."""
    cfg = ctx.cfg
    transfer = transfer_of(cfg, splits)
    ctx.say(f"transfer set: {len(transfer)} examples"
            + (f", without classes {cfg.omit_classes}" if cfg.omit_classes else "")
            + (", unlabelled" if transfer.y is None else ""))
    baseline = None
    if transfer.y is not None:
        ctx.say(f"training the baseline student ({cfg.student_arch} {cfg.student_widths}) on hard labels")
        baseline = _train_student(ctx, splits, transfer, out / "baseline")
    ctx.say(f"distilling {len(teachers)} teacher(s) into the student at T={cfg.temperature}, "
            f"alpha={cfg.alpha}, combine={cfg.combine} ({'online' if cfg.online else 'cached'} teachers)")
    student = _train_student(ctx, splits, transfer, out / "student", teachers)
    return baseline, student
