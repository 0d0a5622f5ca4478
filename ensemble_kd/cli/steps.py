"""The training steps of a run: the teachers, then the hard-label baseline and the distilled student.

Each step skips work whose result is already on disk, so ``--resume`` continues a killed run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import distributed as dist
from ..data import Splits, TransferSet, make_transfer_set
from ..distill import train_baseline
from ..ensemble import data_meta, find_teachers, load_teachers, train_ensemble
from ..run import Run
from ..sweep import distill_sweep, without_labels
from .context import Ctx, transfer_of

VECTORIZE = {"auto": None, "on": True, "off": False}  # --teacher-vectorize -> train_ensemble's flag


def step_teachers(ctx: Ctx, splits: Splits, out: Path) -> list[torch.nn.Module]:
    """Train (or load) the ensemble in ``out/teachers``."""
    cfg = ctx.cfg
    ctx.say(f"training {cfg.teachers} teacher(s) ({cfg.teacher_arch} {cfg.teacher_widths}) on "
            f"{splits.describe()}")
    views = cfg.teacher_views()  # with --teacher-mixup the shifts are part of the views
    teachers = train_ensemble(
        splits, cfg.teacher_specs(), cfg.teachers, cfg.teacher_train_config(),
        out / "teachers", jitter=0 if views is not None else cfg.teacher_jitter,
        views=views, device=ctx.device, progress=ctx.progress,
        ranks=(dist.rank(), dist.world()), vectorize=VECTORIZE[cfg.teacher_vectorize],
        allow_imports=ctx.allow_imports,
    )
    if dist.active():  # each rank trained its share; all of them read every teacher
        dist.barrier()
        teachers = load_teachers(find_teachers(out / "teachers"), ctx.device, splits=splits,
                                 allow_imports=ctx.allow_imports)[0]
    return teachers


def _initial_student(ctx: Ctx, splits: Splits) -> torch.nn.Module:
    """The student before training: the same initial weights for the baseline and every candidate."""
    torch.manual_seed(ctx.cfg.seed + 10_000)
    return ctx.cfg.student_spec().build(splits.input_shape, splits.n_classes,
                                        allow_imports=ctx.allow_imports)


def _train_baseline(ctx: Ctx, splits: Splits, transfer: TransferSet, folder: Path):
    """The student architecture on hard labels, same budget, saved in ``folder``."""
    cfg = ctx.cfg
    run = Run(folder, writer=dist.is_main())
    if (done := run.load_finished(ctx.device, expect={"data_fingerprint": splits.fingerprint()},
                                  allow_imports=ctx.allow_imports)):
        return done[0]
    if transfer.y is None:
        raise ValueError("the hard-label baseline needs a labelled transfer set")
    tcfg, dcfg = cfg.train_config(), cfg.distill_config()
    # the fair baseline: the distilled student's initial weights, inputs (views) and budget
    result = train_baseline(
        _initial_student(ctx, splits), transfer, tcfg, views=dcfg.views, jitter=dcfg.jitter,
        val=(splits.x_val, splits.y_val), run_dir=folder, device=ctx.device, progress=ctx.progress,
        extra_state={"data": splits.fingerprint(), "transfer": transfer.indices.tolist()[:50]},
    )
    run.finish(result.model, {**data_meta(splits), "role": "baseline", "temperature": None})
    dist.barrier()
    return result.model


def _train_distilled(ctx: Ctx, splits: Splits, transfer: TransferSet, folder: Path, teachers):
    """The distilled student (the best candidate on validation when T or alpha is swept)."""
    cfg = ctx.cfg
    run = Run(folder, writer=dist.is_main())
    if (done := run.load_finished(ctx.device, expect={"data_fingerprint": splits.fingerprint()},
                                  allow_imports=ctx.allow_imports)):
        return done
    sweep = distill_sweep(
        lambda: _initial_student(ctx, splits), teachers, transfer, cfg.train_config(),
        cfg.distill_configs(), val=(splits.x_val, splits.y_val), run_dir=folder,
        device=ctx.device, progress=ctx.progress, say=ctx.say, allow_imports=ctx.allow_imports,
    )
    kept = sweep.candidates[sweep.best]
    meta = {**data_meta(splits), "role": "student", "temperature": kept.temperature,
            "alpha": kept.alpha, "candidates": [c._asdict() for c in sweep.candidates]}
    run.finish(sweep.model, meta)
    dist.barrier()
    return sweep.model, meta


def step_students(ctx: Ctx, splits: Splits, teachers, out: Path):
    """Train (or load) the baseline in ``out/baseline`` (labelled transfer sets only) and the
    distilled student in ``out/student``; returns (baseline or None, student, student's meta)."""
    cfg = ctx.cfg
    transfer = transfer_of(cfg, splits)
    ctx.say(f"transfer set: {len(transfer)} examples"
            + (f" from {cfg.transfer_data}" if cfg.transfer_data else "")
            + (f", without classes {cfg.omit_classes}" if cfg.omit_classes else "")
            + (", unlabelled" if transfer.y is None else ""))
    baseline = None
    # The baseline learns from hard labels: on the transfer set when it is a labelled part of the
    # training split; with --transfer-data (labelled or not) on the whole labelled training split,
    # so it never sees data the teachers did not; without labels at all it is skipped.
    labelled = make_transfer_set(splits, seed=cfg.data_seed) if cfg.transfer_data else transfer
    if labelled.y is not None:
        ctx.say(f"training the baseline student ({cfg.student_arch} {cfg.student_widths}) on hard "
                f"labels{' of the training split' if cfg.transfer_data else ''}")
        baseline = _train_baseline(ctx, splits, labelled, out / "baseline")
    else:
        ctx.say("no hard-label baseline: the transfer set is unlabelled (--unlabelled)")
    grid = cfg.distill_configs()
    if transfer.y is None:  # no hard term: alpha changes nothing, one candidate per T
        grid = without_labels(grid)
    alphas = sorted({c.alpha for c in grid})
    settings = (f"T={grid[0].temperature:g}, alpha={grid[0].alpha:g}" if len(grid) == 1 else
                f"{len(grid)} candidate settings (T in {' '.join(f'{t:g}' for t in cfg.temperatures())}, "
                f"alpha in {' '.join(f'{a:g}' for a in alphas)}), the best on validation kept")
    ctx.say(f"distilling {len(teachers)} teacher(s) into the student at {settings}, "
            f"combine={cfg.combine} ({'online' if cfg.online else 'cached'} teachers)")
    student, meta = _train_distilled(ctx, splits, transfer, out / "student", teachers)
    return baseline, student, meta
