"""What each ``ensemble-kd`` subcommand does, step by step, in a run directory.

Run directory layout (every file written atomically)::

    OUT/config.json          the resolved configuration and command
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
import sys
import time
from pathlib import Path

import torch

from . import distributed as dist
from .checkpoint import load_model, save_model
from .config import RunConfig
from .data import Splits, TransferSet, load_dataset, make_transfer_set
from .distill import distill
from .ensemble import data_meta, ensemble_report, find_teachers, load_teachers, train_ensemble
from .io import atomic_write_json, atomic_write_text, read_json
from .metrics import evaluate, format_table, per_class_accuracy
from .models import count_parameters
from .predict import predict_logits, resolve_device
from .train import train


class Ctx:
    """Per-command context: config, device, output folder, messages."""

    def __init__(self, cfg: RunConfig, out: Path | None):
        self.cfg, self.out = cfg, out
        self.device = dist.init(resolve_device(cfg.device))  # torchrun: join the group
        self.progress = False if cfg.quiet or not dist.is_main() else None
        self.t0 = time.perf_counter()

    def say(self, msg: str) -> None:
        if not self.cfg.quiet and dist.is_main():
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def load_data(cfg: RunConfig) -> Splits:
    return load_dataset(cfg.dataset, **cfg.data_options())


def transfer_of(cfg: RunConfig, splits: Splits) -> TransferSet:
    return make_transfer_set(
        splits, fraction=cfg.transfer_fraction, omit_classes=cfg.omit_classes,
        labelled=not cfg.unlabelled, seed=cfg.data_seed,
    )


# ---------------------------------------------------------------- steps


VECTORIZE = {"auto": None, "on": True, "off": False}


def step_teachers(ctx: Ctx, splits: Splits, out: Path) -> list[torch.nn.Module]:
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
    if (folder / "model.pt").exists():
        return load_model(folder / "model.pt", ctx.device)[0]
    torch.manual_seed(cfg.seed + 10_000)  # same initial weights for baseline and student
    student = cfg.student_spec().build(splits.input_shape, splits.n_classes)
    tcfg = cfg.train_config()
    val = (splits.x_val, splits.y_val)
    if teachers is None:
        if transfer.y is None:
            raise ValueError("the hard-label baseline needs a labelled transfer set")
        from .batching import TensorBatches

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
    if dist.is_main():
        save_model(folder / "model.pt", result.model, meta)
    dist.barrier()
    return result.model


def step_students(ctx: Ctx, splits: Splits, teachers, out: Path):
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


def _row(name: str, probs: torch.Tensor, y: torch.Tensor, params: int | None) -> dict:
    return {"model": name, "params": params, **evaluate(probs, y)}


def _per_class(probs: torch.Tensor, y: torch.Tensor, n_classes: int) -> list[float | None]:
    """Per-class accuracy, None for a class without test examples (JSON has no NaN)."""
    return [None if a != a else a for a in per_class_accuracy(probs, y, n_classes)]


def comparison(ctx: Ctx, splits: Splits, teachers, baseline, student) -> tuple[list[dict], dict]:
    """Test-set rows for every teacher, the ensemble, the baseline and the distilled student."""
    x, y = splits.x_test, splits.y_test
    rows, extra = [], {}
    if teachers:
        rep = ensemble_report(teachers, x, y, device=ctx.device)
        for k, (m, r) in enumerate(zip(teachers, rep["members"], strict=True)):
            rows.append({"model": f"teacher {k}", "params": count_parameters(m), **r})
        accs = torch.tensor([r["accuracy"] for r in rep["members"]])
        extra["teacher_accuracy_mean"] = float(accs.mean())
        extra["teacher_accuracy_std"] = float(accs.std()) if len(accs) > 1 else 0.0
        extra["teacher_disagreement"] = rep["disagreement"]
        rows.append({"model": f"ensemble of {len(teachers)}",
                     "params": sum(count_parameters(m) for m in teachers), **rep["ensemble"]})
        extra["per_class_accuracy"] = {f"ensemble of {len(teachers)}": _per_class(
            rep["probs"], y, splits.n_classes)}
    for name, m in (("baseline student (hard labels)", baseline), ("distilled student", student)):
        if m is not None:
            probs = torch.softmax(predict_logits(m, x, device=ctx.device), -1)
            rows.append(_row(name, probs, y, count_parameters(m)))
            extra.setdefault("per_class_accuracy", {})[name] = _per_class(probs, y, splits.n_classes)
    extra["class_names"] = list(splits.class_names)
    return rows, extra


COLUMNS = ["model", "params", "accuracy", "error", "top5", "nll", "ece"]


def write_summary(ctx: Ctx, out: Path, rows: list[dict], extra: dict, title: str) -> str:
    """Write summary.json / summary.md (rank 0 only) and print the table."""
    table = format_table(rows, COLUMNS)
    if not dist.is_main():
        return table
    notes = [f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in extra.items()
             if not isinstance(v, (dict, list)) and not (isinstance(v, str) and "\n" in v)]
    text = f"# {title}\n\n{table}\n\n" + "\n".join(notes) + "\n"
    for v in extra.values():
        if isinstance(v, str) and "\n" in v:
            text += f"\n{v}\n"
    atomic_write_json(out / "summary.json", {"rows": rows, **extra,
                                             "seconds": time.perf_counter() - ctx.t0})
    atomic_write_text(out / "summary.md", text)
    print(table)
    if "coverage_table" in extra:
        print("\n" + extra["coverage_table"])
    return table


# ---------------------------------------------------------------- specialists (uses `specialists`)


def _generalist_path(ctx: Ctx, out: Path) -> Path:
    if ctx.cfg.specialists_from == "teacher":
        return find_teachers(out / "teachers")[0]
    if ctx.cfg.specialists_from == "student":
        return out / "student" / "model.pt"
    raise ValueError(f"generalist must be 'student' or 'teacher', got {ctx.cfg.specialists_from!r}")


def step_report(ctx: Ctx, splits: Splits, model, folder: Path):
    """Confusion analysis (and report) of ``model`` on the validation split, used for clustering."""
    from specialists.confusion import analyse
    from specialists.report import write_confusion_report

    probs = torch.softmax(predict_logits(model, splits.x_val, device=ctx.device), -1)
    analysis = analyse(probs, splits.y_val, class_names=splits.class_names,
                       n_clusters=ctx.cfg.n_clusters, method=ctx.cfg.cluster_method)
    if dist.is_main():
        html = write_confusion_report(analysis, folder, title="Confusion report (validation split)")
        ctx.say(f"confusion report: {html}")
    return analysis


def _choose_subsets(ctx: Ctx, analysis) -> list[list[int]]:
    from specialists.clustering import select_subsets

    cfg = ctx.cfg
    subsets = select_subsets(
        analysis.counts, analysis.clusters, max_size=cfg.max_subset_size,
        max_subsets=cfg.max_specialists, overlap=cfg.overlap,
    )
    return dist.broadcast_object(subsets)  # every rank trains against rank 0's subsets


def _spec_config(cfg: RunConfig):
    from specialists.specialist import SpecialistConfig

    return SpecialistConfig(share=cfg.specialist_share, alpha=cfg.specialist_alpha,
                            temperature=cfg.specialist_temperature)


def step_specialists(ctx: Ctx, splits: Splits, generalist, subsets, folder: Path):
    from specialists.specialist import train_specialists

    names = [[splits.class_names[c] for c in s] for s in subsets]
    ctx.say(f"training {len(subsets)} specialist(s): " + "; ".join(", ".join(n) for n in names))
    specs = train_specialists(
        generalist, subsets, splits, ctx.cfg.train_config(ctx.cfg.specialist_epochs),
        _spec_config(ctx.cfg), folder, device=ctx.device, progress=ctx.progress,
        ranks=(dist.rank(), dist.world()),
    )
    if dist.active():  # each rank trained its share; all of them read every specialist
        from specialists.specialist import load_specialists

        dist.barrier()
        specs = load_specialists(folder, ctx.device)
    return specs


def specialist_rows(ctx: Ctx, splits: Splits, generalist, specs) -> tuple[list[dict], dict]:
    from specialists.combine import combine_predictions
    from specialists.evaluate import evaluate_specialists, format_coverage_table
    from specialists.specialist import specialist_probs

    x, y = splits.x_test, splits.y_test
    pg = torch.softmax(predict_logits(generalist, x, device=ctx.device), -1)
    ps = specialist_probs(specs, x, device=ctx.device)
    subsets = [s.subset for s in specs]
    res = evaluate_specialists(pg, ps, subsets, y, top_n=ctx.cfg.top_n)
    q = combine_predictions(pg, ps, subsets, top_n=ctx.cfg.top_n)
    rows = [
        _row(f"generalist ({ctx.cfg.specialists_from})", pg, y, count_parameters(generalist)),
        _row(f"generalist + {len(specs)} specialists", q, y,
             count_parameters(generalist) + sum(count_parameters(s.model) for s in specs)),
    ]
    return rows, {"specialists": res, "coverage_table": format_coverage_table(res)}


# ---------------------------------------------------------------- subcommands


def cmd_train_ensemble(ctx: Ctx, splits: Splits) -> int:
    teachers = step_teachers(ctx, splits, ctx.out)
    rows, extra = comparison(ctx, splits, teachers, None, None)
    write_summary(ctx, ctx.out, rows, extra, f"Teachers on {splits.name} (test set)")
    return 0


def read_teachers(ctx: Ctx, splits: Splits, teachers_arg: str) -> list[torch.nn.Module]:
    """The teachers in ``--teachers`` (a run folder, or a folder of teacher_<k>/) that fit ``splits``."""
    src = Path(teachers_arg)
    paths = find_teachers(src / "teachers" if (src / "teachers").is_dir() else src)
    return load_teachers(paths, ctx.device, splits=splits)[0]


def cmd_distill(ctx: Ctx, splits: Splits, teachers: list[torch.nn.Module]) -> int:
    baseline, student = step_students(ctx, splits, teachers, ctx.out)
    rows, extra = comparison(ctx, splits, teachers, baseline, student)
    write_summary(ctx, ctx.out, rows, extra, f"Distillation on {splits.name} (test set)")
    return 0


def cmd_run(ctx: Ctx, splits: Splits) -> int:
    cfg, out = ctx.cfg, ctx.out
    teachers = step_teachers(ctx, splits, out)
    baseline, student = step_students(ctx, splits, teachers, out)
    rows, extra = comparison(ctx, splits, teachers, baseline, student)
    if cfg.specialists:
        gpath = _generalist_path(ctx, out)
        generalist = load_model(gpath, ctx.device)[0]
        analysis = step_report(ctx, splits, generalist, out / "report")
        subsets = _choose_subsets(ctx, analysis)
        if subsets:
            specs = step_specialists(ctx, splits, generalist, subsets, out / "specialists")
            srows, sextra = specialist_rows(ctx, splits, generalist, specs)
            rows += srows
            extra.update(sextra)
        else:
            ctx.say("no class subset with confusion to train a specialist on")
    write_summary(ctx, out, rows, extra, f"ensemble-kd run on {splits.name} (test set)")
    ctx.say(f"done: {out / 'summary.md'}")
    return 0


def cmd_evaluate(ctx: Ctx, run: Path) -> int:
    splits = ctx.splits
    teachers = []
    if (run / "teachers").is_dir():
        teachers, _ = load_teachers(find_teachers(run / "teachers"), ctx.device, splits=splits)
    get = lambda name: load_model(run / name / "model.pt", ctx.device)[0] if (  # noqa: E731
        run / name / "model.pt").exists() else None
    baseline, student = get("baseline"), get("student")
    if not teachers and baseline is None and student is None:
        raise FileNotFoundError(f"{run}: no trained models (teachers/, baseline/ or student/)")
    rows, extra = comparison(ctx, splits, teachers, baseline, student)
    if (run / "specialists" / "subsets.json").exists():
        from specialists.specialist import load_specialists

        generalist = load_model(_generalist_path(ctx, run), ctx.device)[0]
        specs = load_specialists(run / "specialists", ctx.device)
        srows, sextra = specialist_rows(ctx, splits, generalist, specs)
        rows += srows
        extra.update(sextra)
    out = ctx.out or run
    write_summary(ctx, out, rows, extra, f"Evaluation of {run} on {splits.name} (test set)")
    return 0


def cmd_confusion_report(ctx: Ctx, args: argparse.Namespace) -> int:
    from specialists.confusion import analyse, load_predictions
    from specialists.report import write_confusion_report

    if args.predictions:
        probs, labels, names = load_predictions(args.predictions)
        analysis = analyse(probs, labels, class_names=names, n_clusters=ctx.cfg.n_clusters,
                           method=ctx.cfg.cluster_method)
        html = write_confusion_report(analysis, ctx.out)
    else:
        splits = load_data(ctx.cfg)
        if args.model:
            model, meta = load_model(args.model, ctx.device)
            _check_model_data(args.model, meta, splits)
            models = [model]
        else:
            models, _ = load_teachers(find_teachers(args.teachers), ctx.device, splits=splits)
        x, y = (splits.x_val, splits.y_val) if args.split == "val" else (splits.x_test, splits.y_test)
        probs = torch.stack(
            [torch.softmax(predict_logits(m, x, device=ctx.device), -1) for m in models]
        ).mean(0)
        analysis = analyse(probs, y, class_names=splits.class_names, n_clusters=ctx.cfg.n_clusters,
                           method=ctx.cfg.cluster_method)
        html = write_confusion_report(
            analysis, ctx.out, title=f"Confusion report: {splits.name}, {args.split} split"
        )
    print(html)
    return 0


def _check_model_data(path, meta: dict, splits: Splits) -> None:
    if meta.get("n_classes") not in (None, splits.n_classes):
        raise ValueError(f"{path}: model has {meta['n_classes']} classes but {splits.name!r} has "
                         f"{splits.n_classes}")
    if meta.get("input_shape") not in (None, list(splits.input_shape)):
        raise ValueError(f"{path}: model takes inputs of shape {tuple(meta['input_shape'])} but "
                         f"{splits.name!r} has inputs of shape {splits.input_shape}")
    if meta.get("data_fingerprint") not in (None, splits.fingerprint()):
        raise ValueError(f"{path}: model was trained on other data ({meta.get('dataset')!r}) than "
                         f"the data set given ({splits.name!r})")


def read_subsets(path: str | Path) -> list[list[int]]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"subsets file {path} does not exist")
    obj = read_json(path)
    subsets = obj.get("subsets") if isinstance(obj, dict) else obj
    if not isinstance(subsets, list) or not all(isinstance(s, list) for s in subsets):
        raise ValueError(f"{path}: expected a JSON list of class lists (or {{\"subsets\": [...]}})")
    return subsets


def read_generalist(ctx: Ctx, splits: Splits, args: argparse.Namespace):
    """``--generalist`` checked against the data, and ``--subsets`` (None: from its confusion)."""
    generalist, meta = load_model(args.generalist, ctx.device)
    _check_model_data(args.generalist, meta, splits)
    subsets = None
    if args.subsets:
        from specialists.subsets import validate_subsets

        subsets = validate_subsets(read_subsets(args.subsets), splits.n_classes)
    return generalist, subsets


def cmd_train_specialists(ctx: Ctx, splits: Splits, generalist, subsets) -> int:
    if subsets is None:
        analysis = step_report(ctx, splits, generalist, ctx.out / "report")
        subsets = _choose_subsets(ctx, analysis)
        if not subsets:
            raise ValueError("the generalist's validation confusion has no subset worth a specialist")
    specs = step_specialists(ctx, splits, generalist, subsets, ctx.out / "specialists")
    rows, extra = specialist_rows(ctx, splits, generalist, specs)
    write_summary(ctx, ctx.out, rows, extra, f"Specialists on {splits.name} (test set)")
    return 0


def check_options(cfg: RunConfig, splits: Splits, command: str, n_teachers: int | None = None) -> None:
    """Check every option ``command`` will use against the data, before the output folder is touched.

    A bad value found here costs a second; found by the step that uses it, after the teachers have
    trained for hours, it would cost the run (and leave a half-made output folder behind).

    Raises:
        ValueError: naming the option and the problem.
    """
    c, shape = splits.n_classes, splits.input_shape

    def jitter_ok(name: str, value: int) -> None:
        if value < 0:
            raise ValueError(f"{name} must be >= 0 pixels, got {value}")
        if value and len(shape) != 3:
            raise ValueError(f"{name} shifts images, but {splits.name!r} inputs have shape {shape}")

    with torch.random.fork_rng(devices=[]):  # building a model draws weights: leave the seed alone
        if command in ("train-ensemble", "run"):
            if cfg.teachers < 1:
                raise ValueError(f"teachers must be >= 1, got {cfg.teachers}")
            if cfg.teacher_vectorize not in VECTORIZE:
                raise ValueError(f"teacher_vectorize must be auto, on or off, got {cfg.teacher_vectorize!r}")
            cfg.train_config(cfg.teacher_epochs)
            cfg.teacher_spec().build(shape, c)
            jitter_ok("teacher_jitter", cfg.teacher_jitter)
        if command in ("distill", "run"):
            cfg.train_config()
            cfg.student_spec().build(shape, c)
            cfg.distill_config().validate(cfg.teachers if command == "run" else n_teachers)
            if cfg.cache_topk >= c:
                raise ValueError(f"cache_topk must lie in [0, {c - 1}] for {c} classes, "
                                 f"got {cfg.cache_topk}")
            jitter_ok("student_jitter", cfg.student_jitter)
            transfer_of(cfg, splits)
    if command == "train-specialists" or (command == "run" and cfg.specialists):
        from specialists.clustering import METHODS

        cfg.train_config(cfg.specialist_epochs)
        _spec_config(cfg).validate()
        if c < 3:
            raise ValueError(f"specialists need at least 3 classes, {splits.name!r} has {c}")
        if cfg.n_clusters is not None and not 1 <= cfg.n_clusters <= c:
            raise ValueError(f"n_clusters must lie in [1, {c}] for {c} classes, got {cfg.n_clusters}")
        if cfg.cluster_method not in METHODS:
            raise ValueError(f"cluster_method must be one of {', '.join(METHODS)}, "
                             f"got {cfg.cluster_method!r}")
        if cfg.specialists_from not in ("student", "teacher"):
            raise ValueError(f"specialists_from must be 'student' or 'teacher', "
                             f"got {cfg.specialists_from!r}")
        for name, low in (("max_specialists", 1), ("max_subset_size", 2), ("overlap", 0),
                          ("top_n", 1)):
            value = getattr(cfg, name)
            if value is not None and value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")


def dispatch(args: argparse.Namespace, cfg: RunConfig) -> int:
    from .cli import prepare_out

    cmd = args.command
    out = Path(args.out) if args.out else None
    if cmd == "evaluate":
        run = Path(args.run)
        if not run.is_dir():
            raise FileNotFoundError(f"{run}: no such run folder")
        saved = run / "config.json"
        if saved.exists():  # the run's own data and specialist settings, unless flags say otherwise
            old = read_json(saved)
            old = old.get("config", {}) if isinstance(old, dict) else {}
            defaults = RunConfig()
            merged = {k: (getattr(cfg, k) if getattr(cfg, k) != getattr(defaults, k) else old.get(k, v))
                      for k, v in vars(cfg).items()}
            cfg = RunConfig(**merged)
        ctx = Ctx(cfg, out)
        ctx.splits = load_data(cfg)
        return cmd_evaluate(ctx, run)
    ctx = Ctx(cfg, out)
    if cmd == "confusion-report":
        return cmd_confusion_report(ctx, args)
    # Fail on bad data, files or options before touching the output folder.
    splits = load_data(cfg)
    cfg = ctx.cfg = cfg.resolve_auto(splits.input_shape)
    teachers = read_teachers(ctx, splits, args.teachers) if cmd == "distill" else None
    generalist, subsets = read_generalist(ctx, splits, args) if cmd == "train-specialists" else (
        None, None)
    check_options(cfg, splits, cmd, n_teachers=len(teachers) if teachers else None)
    prepare_out(out, cfg, cmd, resume=getattr(args, "resume", False),
                overwrite=getattr(args, "overwrite", False))
    if cmd == "train-ensemble":
        return cmd_train_ensemble(ctx, splits)
    if cmd == "distill":
        return cmd_distill(ctx, splits, teachers)
    if cmd == "train-specialists":
        return cmd_train_specialists(ctx, splits, generalist, subsets)
    return cmd_run(ctx, splits)
