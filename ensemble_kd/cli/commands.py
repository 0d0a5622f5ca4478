"""What each ``ensemble-kd`` subcommand does, step by step, in a run directory.

Run directory layout (every file written atomically)::

    OUT/config.json          the resolved configuration and command (see run_record.py)
    OUT/teachers/teacher_k/  model.pt, checkpoint.pt, metrics.jsonl of teacher k
    OUT/baseline/            the student architecture trained on hard labels (same budget)
    OUT/student/             the distilled student (+ cache/ of teacher logits)
    OUT/report/              confusion report of the generalist (validation data)
    OUT/specialists/         specialist_m/ + subsets.json
    OUT/summary.json, OUT/summary.md   every number and the comparison table

Every step skips work whose result is already on disk, so ``--resume`` continues a killed run.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from ..checkpoint import load_model
from ..data import Splits
from ..ensemble import find_teachers, load_teachers
from ..predict import predict_logits
from ..run import Run
from .checks import check_options
from .config import RunConfig
from .context import Ctx, allowed_modules, load_data, transfer_size
from .inputs import check_model_data, read_generalist, read_teachers
from .merge_steps import cmd_distill_specialists, distill_specialists_args, run_folder
from .parser import COMMANDS, given_fields
from .products import cmd_export, cmd_predict
from .run_record import prepare_out, saved_config
from .specialist_steps import (
    generalist_path,
    load_run_specialists,
    specialist_rows,
    step_report,
    step_specialists,
)
from .steps import step_students, step_teachers
from .summary import comparison, training_settings, write_summary


def cmd_train_ensemble(ctx: Ctx, splits: Splits) -> int:
    """``train-ensemble``: the teachers and their table."""
    teachers = step_teachers(ctx, splits, ctx.out)
    rows, extra = comparison(ctx, splits, teachers, None, None)
    extra["training_settings"] = training_settings(ctx.cfg, teachers=True)
    write_summary(ctx, ctx.out, rows, extra, f"Teachers on {splits.name} (test set)")
    return 0


def cmd_distill(ctx: Ctx, splits: Splits, teachers: list[torch.nn.Module]) -> int:
    """``distill``: the baseline and the student from saved teachers, and their table."""
    baseline, student, meta = step_students(ctx, splits, teachers, ctx.out)
    rows, extra = comparison(ctx, splits, teachers, baseline, student, meta)
    extra["training_settings"] = training_settings(ctx.cfg, students=True)
    write_summary(ctx, ctx.out, rows, extra, f"Distillation on {splits.name} (test set)")
    return 0


def cmd_run(ctx: Ctx, splits: Splits) -> int:
    """``run``: teachers -> baseline and student -> confusion report -> specialists -> table."""
    cfg, out = ctx.cfg, ctx.out
    teachers = step_teachers(ctx, splits, out)
    baseline, student, meta = step_students(ctx, splits, teachers, out)
    rows, extra = comparison(ctx, splits, teachers, baseline, student, meta)
    extra["training_settings"] = training_settings(cfg, teachers=True, students=True,
                                                   specialists=cfg.specialists)
    if cfg.specialists:
        generalist = load_model(generalist_path(cfg, out), ctx.device,
                                allow_imports=ctx.allow_imports)[0]
        subsets = step_report(ctx, splits, generalist, out / "report")
        if subsets:
            specs = step_specialists(ctx, splits, generalist, subsets, out / "specialists")
            srows, sextra = specialist_rows(ctx, splits, generalist, specs)
            rows += srows
            extra.update(sextra)
    write_summary(ctx, out, rows, extra, f"ensemble-kd run on {splits.name} (test set)")
    ctx.say(f"done: {out / 'summary.md'}")
    return 0


def cmd_evaluate(ctx: Ctx, splits: Splits, run: Path) -> int:
    """``evaluate``: the table of every model saved in ``run``."""
    teachers = []
    if (run / "teachers").is_dir():
        teachers, _ = load_teachers(find_teachers(run / "teachers"), ctx.device, splits=splits,
                                    allow_imports=ctx.allow_imports)

    def saved(name: str):
        return Run(run / name).load_finished(ctx.device, allow_imports=ctx.allow_imports) or (
            None, None)

    baseline, student, meta = saved("baseline")[0], *saved("student")
    if not teachers and baseline is None and student is None:
        raise FileNotFoundError(f"{run}: no trained models (teachers/, baseline/ or student/)")
    rows, extra = comparison(ctx, splits, teachers, baseline, student, meta)
    if (run / "specialists" / "subsets.json").exists():
        generalist = load_model(generalist_path(ctx.cfg, run), ctx.device,
                                allow_imports=ctx.allow_imports)[0]
        specs = load_run_specialists(ctx, run / "specialists")
        srows, sextra = specialist_rows(ctx, splits, generalist, specs)
        rows += srows
        extra.update(sextra)
    # Without --out the table goes beside the run's own summary (evaluate.json / evaluate.md),
    # never over it: summary.json stays the record of what the run itself measured.
    name = "summary" if ctx.out else "evaluate"
    write_summary(ctx, ctx.out or run, rows, extra,
                  f"Evaluation of {run} on {splits.name} (test set)", name=name)
    ctx.say(f"wrote {(ctx.out or run) / (name + '.md')}")
    return 0


def cmd_confusion_report(ctx: Ctx, args: argparse.Namespace) -> int:
    """``confusion-report``: of saved predictions, a model or an ensemble."""
    from specialists.confusion import analyse, load_predictions
    from specialists.report import write_confusion_report

    if args.predictions:
        probs, labels, names = load_predictions(args.predictions)
        analysis = analyse(probs, labels, class_names=names, n_clusters=ctx.cfg.n_clusters,
                           method=ctx.cfg.cluster_method)
        prepare_out(ctx.out, ctx.cfg, "confusion-report", resume=False, overwrite=args.overwrite)
        html = write_confusion_report(analysis, ctx.out)
    else:
        splits = load_data(ctx.cfg, ctx.allow_imports)
        if args.model:
            model, meta = load_model(args.model, ctx.device, allow_imports=ctx.allow_imports)
            check_model_data(args.model, meta, splits)
            models = [model]
        else:
            models, _ = load_teachers(find_teachers(args.teachers), ctx.device, splits=splits,
                                      allow_imports=ctx.allow_imports)
        x, y = (splits.x_val, splits.y_val) if args.split == "val" else (splits.x_test, splits.y_test)
        probs = torch.stack(
            [torch.softmax(predict_logits(m, x, device=ctx.device), -1) for m in models]
        ).mean(0)
        analysis = analyse(probs, y, class_names=splits.class_names, n_clusters=ctx.cfg.n_clusters,
                           method=ctx.cfg.cluster_method)
        prepare_out(ctx.out, ctx.cfg, "confusion-report", resume=False, overwrite=args.overwrite)
        html = write_confusion_report(
            analysis, ctx.out, title=f"Confusion report: {splits.name}, {args.split} split"
        )
    print(html)
    return 0


def cmd_train_specialists(ctx: Ctx, splits: Splits, generalist, subsets) -> int:
    """``train-specialists``: specialists for ``subsets`` (None: from the generalist's confusion)."""
    if subsets is None:
        subsets = step_report(ctx, splits, generalist, ctx.out / "report")
        if not subsets:
            raise ValueError("the generalist's confusion is too weak to choose a subset worth a "
                             f"specialist (see {ctx.out / 'report' / 'report.md'}); pass --subsets")
    specs = step_specialists(ctx, splits, generalist, subsets, ctx.out / "specialists")
    rows, extra = specialist_rows(ctx, splits, generalist, specs)
    extra["training_settings"] = training_settings(ctx.cfg, specialists=True)
    write_summary(ctx, ctx.out, rows, extra, f"Specialists on {splits.name} (test set)")
    return 0


def saved_settings(cfg: RunConfig, run: Path, given: set[str]) -> RunConfig:
    """A run's own settings (``run/config.json``), except those the user set now (``given``).

    Used by ``evaluate`` and ``--resume``: a flag the user typed wins even when it equals the
    default (``--top-n 1`` on a run saved with 2 uses 1); every other setting is the run's (or the
    default, for a setting the run did not record).
    """
    old = saved_config(run)
    return RunConfig(**{k: (v if k in given else old.get(k, v)) for k, v in vars(cfg).items()})


def auto_message(cfg: RunConfig, resolved: RunConfig, splits: Splits) -> str | None:
    """One line saying what the "auto" options of ``cfg`` became in ``resolved`` (None: none)."""
    chosen = [f"{k}={getattr(resolved, k)}" for k in cfg.auto_fields()
              if getattr(resolved, k) is not None]  # a teacher option still None: the shared one
    if not chosen:
        return None
    return (f"auto options for {len(splits.y_train):,} training examples of shape "
            f"{tuple(splits.input_shape)}: {', '.join(chosen)}")


def dispatch(args: argparse.Namespace, cfg: RunConfig) -> int:
    """Run the subcommand ``args.command`` with ``cfg``; returns the exit code."""
    cmd = args.command
    out = Path(args.out) if args.out else None
    allowed = allowed_modules(args)
    if cmd == "evaluate":
        run = Path(args.run)
        if not run.is_dir():
            raise FileNotFoundError(f"{run}: no such run folder")
        cfg = saved_settings(cfg, run, given_fields(args, COMMANDS[cmd][1]))
        ctx = Ctx(cfg, out, allowed)
        return cmd_evaluate(ctx, load_data(cfg, allowed), run)
    if cmd == "distill-specialists":  # the run's own settings, the merge's options on top
        run, out = distill_specialists_args(args)
        run_folder(run)
        # resumed: the settings it started with (the run's and the merge's), else the run's
        saved = out if args.resume and (out / "config.json").exists() else run
        # runtime options (device, quiet) are this command's own, not the run's
        cfg = dataclasses.replace(saved_settings(cfg, saved, given_fields(args, COMMANDS[cmd][1])),
                                  device=cfg.device, quiet=cfg.quiet)
        return cmd_distill_specialists(Ctx(cfg, out, allowed), run, args)
    if getattr(args, "resume", False) and out is not None and (out / "config.json").exists():
        cfg = saved_settings(cfg, out, given_fields(args, COMMANDS[cmd][1]))
    ctx = Ctx(cfg, out, allowed)
    if cmd == "confusion-report":
        return cmd_confusion_report(ctx, args)
    if cmd == "predict":
        return cmd_predict(ctx, args)
    if cmd == "export":
        return cmd_export(ctx, args)
    # Fail on bad data, files or options before touching the output folder.
    splits = load_data(cfg, allowed)
    # "auto" options are decided once, here; config.json records the result, so a resumed run
    # (whose saved settings are already decided) keeps them
    resolved = ctx.cfg = cfg.resolve_auto(splits.input_shape, len(splits.y_train),
                                          transfer_size(cfg, splits))
    said, cfg = auto_message(cfg, resolved, splits), resolved
    teachers = read_teachers(ctx, splits, args) if cmd == "distill" else None
    generalist, subsets = read_generalist(ctx, splits, args) if cmd == "train-specialists" else (
        None, None)
    check_options(cfg, splits, cmd, n_teachers=len(teachers) if teachers else None,
                  allow_imports=allowed)
    prepare_out(out, cfg, cmd, resume=getattr(args, "resume", False),
                overwrite=getattr(args, "overwrite", False))
    if said:  # after the checks: bad input gets its one line of error alone
        ctx.say(said)
    if cmd == "train-ensemble":
        return cmd_train_ensemble(ctx, splits)
    if cmd == "distill":
        return cmd_distill(ctx, splits, teachers)
    if cmd == "train-specialists":
        return cmd_train_specialists(ctx, splits, generalist, subsets)
    return cmd_run(ctx, splits)
