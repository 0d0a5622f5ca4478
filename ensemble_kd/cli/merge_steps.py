"""``distill-specialists``: a run's generalist + specialists distilled back into one model.

Reads a finished run folder (``run`` with specialists, or ``train-specialists`` with
``--generalist``), decides the merge's budget and the control's objective from how the generalist
was trained, checks everything before the output folder is touched, then drives
:func:`specialists.distill_specialists` and writes the comparison::

    OUT/config.json              the resolved options (the run's, plus the merge's)
    OUT/q_cache/, OUT/model/, OUT/control/   see specialists.merge
    OUT/summary.json, OUT/summary.md         generalist, control, combined, merged; share kept

Like the other specialist steps, its imports of :mod:`specialists` sit inside the functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from ..cache import teachers_fingerprint
from ..checkpoint import load_model
from ..distill import DistillConfig
from ..ensemble import data_meta, find_teachers, load_teachers
from ..io import atomic_write_json, atomic_write_text, read_json
from ..train import TrainConfig
from ..views import ViewConfig
from .config import RunConfig
from .context import Ctx, load_data, transfer_of
from .inputs import check_model_data
from .run_record import prepare_out, read_run_record
from .specialist_steps import generalist_path, load_run_specialists

DEFAULT_EPOCHS = 10  # --merge-epochs: the generalist is trained already; this is a continuation
# a generalist that was not distilled: T 2 and alpha 0.5, as MergeConfig (E6's pilots)
DEFAULT_TEMPERATURE, DEFAULT_ALPHA = 2.0, 0.5


def run_folder(run: Path) -> str:
    """The command that wrote ``run`` (``run`` or ``train-specialists``); refuses other folders."""
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder")
    if not (run / "config.json").is_file():
        raise ValueError(f"{run}: no config.json: not a run folder written by ensemble-kd run or "
                         "train-specialists")
    command = read_run_record(run / "config.json")["command"]
    if command not in ("run", "train-specialists"):
        raise ValueError(f"{run} holds a {command!r} run, which trains no specialists; give a run "
                         "folder of ensemble-kd run or train-specialists")
    if not (run / "specialists" / "subsets.json").is_file():
        raise ValueError(f"{run}: the run has no specialists (no specialists/subsets.json): "
                         "nothing to distil back; train them with run or train-specialists")
    return command


def _generalist(ctx: Ctx, splits, run: Path, command: str, given: str | None):
    """The generalist (checked against the data and the specialists' record) and its metadata."""
    if given is None and command == "train-specialists":
        raise ValueError(f"{run} was written by train-specialists, which does not record the "
                         "generalist's file: pass --generalist FILE")
    path = Path(given) if given else generalist_path(ctx.cfg, run)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the generalist's model file is missing")
    model, meta = load_model(path, ctx.device, allow_imports=ctx.allow_imports)
    check_model_data(path, meta, splits)
    recorded = read_json(run / "specialists" / "subsets.json").get("generalist_fingerprint")
    if recorded not in (None, teachers_fingerprint([model])):
        raise ValueError(f"{path} is not the generalist the specialists in {run / 'specialists'} "
                         "were trained from")
    return model.eval(), meta


def _check_subsets(path: Path, n_classes: int) -> None:
    """The subsets the run records, valid for the data's classes (before any specialist loads)."""
    from specialists.subsets import validate_subsets

    obj = read_json(path)
    subsets = obj.get("subsets") if isinstance(obj, dict) else None
    try:
        validate_subsets(subsets if subsets is not None else [], n_classes)
    except ValueError as e:
        raise ValueError(f"{path}: invalid subsets: {e}") from None


def _control(ctx: Ctx, splits, run: Path, gen_meta: dict, labelled: bool):
    """(kind, teachers, DistillConfig or None) of the control, decided from the generalist's role."""
    cfg = ctx.cfg
    role = gen_meta.get("role")
    kind = cfg.merge_control
    if kind is None:
        distilled = role == "student" and (run / "teachers").is_dir()
        kind = "teachers" if distilled else "labels" if role == "teacher" and labelled else "self"
    if kind == "teachers":
        if role != "student" or not (run / "teachers").is_dir():
            raise ValueError("--merge-control teachers continues the generalist's distillation: "
                             "it needs a distilled student as generalist and its teachers/ in the run")
        teachers, _ = load_teachers(find_teachers(run / "teachers"), ctx.device, splits=splits,
                                    allow_imports=ctx.allow_imports)
        alpha = gen_meta.get("alpha", cfg.alphas()[0] if len(cfg.alphas()) == 1 else None)
        if alpha is None or gen_meta.get("temperature") is None:
            raise ValueError("the generalist records no distillation temperature or alpha to "
                             "continue its training with; pass --merge-control self or labels")
        dcfg = DistillConfig(temperature=float(gen_meta["temperature"]), alpha=float(alpha),
                             combine=cfg.combine, teacher_weights=cfg.teacher_weights)
        return kind, teachers, dcfg
    return kind, [], None


def _merge_views(cfg: RunConfig) -> ViewConfig | None:
    """The merge's views: ``--merge-views`` V of the view settings, or None (the plain inputs)."""
    n = 1 if cfg.merge_views is None else cfg.merge_views
    if n < 1:
        raise ValueError(f"merge_views must be >= 1, got {n}")
    if n == 1:
        return None
    v = dataclasses.replace(cfg.view_config() or ViewConfig(), views=n, seed=cfg.seed)
    if not v.augments:
        raise ValueError(f"--merge-views {n} needs augmented views, and neither the "
                         "run nor this command sets any: add --view-shift, --view-mixup, "
                         "--view-noise, ...")
    return v


def _views_text(views: ViewConfig | None) -> str:
    if views is None:
        return " of the transfer set as it is"
    return f", on cached views of every transfer example ({views.settings_text()}), q on each"


def _settings(cfg: RunConfig, gen_meta: dict) -> tuple[TrainConfig, float, float]:
    """The merge's budget (the control's too), temperature and alpha, unset options decided."""
    own = gen_meta.get("role") == "student" and gen_meta.get("temperature") is not None
    t = cfg.merge_temperature if cfg.merge_temperature is not None else (
        float(gen_meta["temperature"]) if own else DEFAULT_TEMPERATURE)
    a = cfg.merge_alpha if cfg.merge_alpha is not None else (
        float(gen_meta.get("alpha", DEFAULT_ALPHA)) if own else DEFAULT_ALPHA)
    tcfg = TrainConfig(
        epochs=cfg.merge_epochs if cfg.merge_epochs is not None else DEFAULT_EPOCHS,
        batch_size=cfg.merge_batch_size if cfg.merge_batch_size is not None else cfg.batch_size,
        optimizer=cfg.optimizer, lr=cfg.merge_lr if cfg.merge_lr is not None else cfg.lr / 10,
        momentum=cfg.momentum, weight_decay=cfg.weight_decay, schedule=cfg.schedule,
        early_stopping=0, seed=cfg.seed,
    ).validate()
    return tcfg, t, a


def cmd_distill_specialists(ctx: Ctx, run: Path, args: argparse.Namespace) -> int:
    """``distill-specialists``: check, then merge, train the control, compare on the test set."""
    from specialists import MergeConfig, distill_specialists, evaluate_merge, format_merge_report
    from specialists.merge import CONTROLS, check_merge_inputs

    command = run_folder(run)
    splits = load_data(ctx.cfg, ctx.allow_imports)
    cfg = ctx.cfg = ctx.cfg.resolve_auto(splits.input_shape, len(splits.y_train))
    if cfg.merge_control not in (None, *CONTROLS):
        raise ValueError(f"merge_control must be one of {', '.join(CONTROLS)}, "
                         f"got {cfg.merge_control!r}")
    generalist, gen_meta = _generalist(ctx, splits, run, command, args.generalist)
    _check_subsets(run / "specialists" / "subsets.json", splits.n_classes)
    specs = load_run_specialists(ctx, run / "specialists")
    transfer = transfer_of(cfg, splits)
    tcfg, t, a = _settings(cfg, gen_meta)
    kind, teachers, control_cfg = _control(ctx, splits, run, gen_meta, transfer.y is not None)
    views = _merge_views(cfg)
    mcfg = MergeConfig(temperature=t, alpha=a, top_n=cfg.top_n, control=kind,
                       views=views).validate()
    check_merge_inputs(generalist, specs, transfer, mcfg, teachers)
    # everything checked: only now is the output folder touched
    prepare_out(ctx.out, cfg, "distill-specialists", resume=args.resume, overwrite=args.overwrite)

    result = distill_specialists(
        generalist, specs, transfer, tcfg, mcfg, ctx.out, control_teachers=teachers,
        control_config=control_cfg, val=(splits.x_val, splits.y_val), meta=data_meta(splits),
        device=ctx.device, progress=ctx.progress, say=ctx.say,
    )
    ctx.say("comparing on the test set")
    report = evaluate_merge(generalist, specs, result.merged, result.control, splits.x_test,
                            splits.y_test, top_n=cfg.top_n, seed=cfg.seed, device=ctx.device)
    settings = {"run": str(run), "temperature": t, "alpha": a, "control": kind,
                "control_distill": None if control_cfg is None else {
                    "temperature": control_cfg.temperature, "alpha": control_cfg.alpha},
                "train_config": dataclasses.asdict(tcfg), "top_n": cfg.top_n,
                "transfer_examples": len(transfer), "labelled_transfer": transfer.y is not None,
                "views": None if views is None else views.as_dict(),
                "q_fingerprint": result.q_fingerprint}
    table = format_merge_report(report)
    atomic_write_json(ctx.out / "summary.json", {
        **report, "settings": settings, "gain_kept_estimate": report["gain_kept"]["estimate"],
        "seconds": time.perf_counter() - ctx.t0})
    atomic_write_text(ctx.out / "summary.md", f"# Specialists distilled into one model: {run} "
                      f"({splits.name}, test set)\n\n{table}\nControl: {kind}; merged: T = {t:g}, "
                      f"alpha = {a:g}; both {tcfg.epochs} epochs at lr {tcfg.lr:g}, batch "
                      f"{tcfg.batch_size}, from the generalist's weights, on the same batches"
                      f"{_views_text(views)}.\n")
    print(table)
    ctx.say(f"done: {ctx.out / 'summary.md'}")
    return 0


def distill_specialists_args(args: argparse.Namespace) -> tuple[Path, Path]:
    """(run folder, output folder) of ``distill-specialists``: ``--out`` defaults to RUN/merged."""
    run = Path(args.run)
    return run, Path(args.out) if args.out else run / "merged"


__all__ = ["cmd_distill_specialists", "distill_specialists_args", "run_folder"]
