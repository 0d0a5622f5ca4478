"""Run the experiments in order, resumably, rewriting the report after each one."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

from ensemble_kd import load_dataset
from ensemble_kd.io import atomic_write_json, read_json
from ensemble_kd.machine import describe_machine
from ensemble_kd.train import flush_denormals

from . import e1_temperature, e2_omitted, e3_ensemble, e4_regulariser, e5_specialists
from .common import RUN_FILE, Context
from .presets import PRESETS
from .report import HEADLINES, write_report

# E3-E5 first: their models are cheaper (E4 and E5 share the MLP members), so a long run has
# numbers early; E1's big teacher (also E2's) comes after.
ORDER = ["E3", "E4", "E5", "E1", "E2"]
_DATASET_TITLES = {"fashion-mnist": "Fashion-MNIST", "digits": "scikit-learn's 8x8 digits"}
MODULES = {"E1": e1_temperature, "E2": e2_omitted, "E3": e3_ensemble, "E4": e4_regulariser,
           "E5": e5_specialists}
# Optional experiments, run after the named one when their module exists: E6 (specialists
# distilled back into one model) is ``paper/e6_merged.py``, built on
# ``specialists.distill_specialists``; it reuses E5's generalists and specialists. Its contract:
# report.E6_CONTRACT.
OPTIONAL = {"E6": ("e6_merged", "E5")}


def experiments() -> tuple[list[str], dict]:
    """The run order and modules, with each optional experiment whose module exists."""
    order, modules = list(ORDER), dict(MODULES)
    for exp, (name, after) in OPTIONAL.items():
        if importlib.util.find_spec(f"{__package__}.{name}") is not None:
            modules[exp] = importlib.import_module(f"{__package__}.{name}")
            order.insert(order.index(after) + 1, exp)
    return order, modules


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="reproduce_paper.py",
        description="Reproduce Hinton, Vinyals & Dean (2015) on Fashion-MNIST (E1-E6) and write "
                    "a report (report.md, report.html, results.json, PNG figures) to OUT/report. "
                    "Interrupted runs resume: rerun the same command.",
    )
    ap.add_argument("--out", required=True, help="run folder (models, results, report)")
    ap.add_argument("--quick", action="store_true",
                    help="small budgets (under 15 minutes on 2 CPU cores)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="budget preset (default: full, or quick with --quick; tiny = smoke test)")
    ap.add_argument("--only", default=None,
                    help="comma-separated experiments to run, e.g. E3,E4 (default: all)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST IDX files")
    ap.add_argument("--restore", default=None, metavar="RESULTS_JSON",
                    help="first put back into OUT the results of a finished run's results.json "
                         "(e.g. docs/reproduction/results.json) for every experiment not in "
                         "--only and not in OUT yet, with its commands and wall time, so that "
                         "a run folder lost with its machine need not be trained again")
    ap.add_argument("--helper", action="store_true",
                    help="train, beside a main invocation on the same OUT, the models of the "
                         "--only experiments that need none of its results (E1: the fair "
                         "baselines and every row but the first; E3: the members, the "
                         "students' candidates, the control and the students' other seeds, "
                         "each from the last one down), so that two cores work on one "
                         "experiment; the main invocation loads them, waiting for any still in "
                         "training. Writes no results or report")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared 2-core machine, two "
                         "threads per process ran 3-8x slower than one under load)")
    args = ap.parse_args(argv)
    if args.quick and args.preset not in (None, "quick"):
        ap.error("--quick and --preset disagree")
    args.preset = args.preset or ("quick" if args.quick else "full")
    if args.only:
        wanted = [e.strip().upper() for e in args.only.split(",") if e.strip()]
        order, _ = experiments()
        missing = [e for e in wanted if e in OPTIONAL and e not in order]
        if missing:
            ap.error(f"--only: {', '.join(missing)} has no module yet (scripts/paper/"
                     f"{OPTIONAL[missing[0]][0]}.py)")
        bad = [e for e in wanted if e not in order]
        if bad:
            ap.error(f"--only: unknown experiment(s) {', '.join(bad)}; valid: {', '.join(order)}")
        args.only = wanted
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    if args.helper:
        _, modules = experiments()
        can = [e for e in modules if hasattr(modules[e], "prefetch")]
        if not args.only or any(e not in can for e in args.only):
            ap.error(f"--helper needs --only with experiments that have models to train "
                     f"beside the main invocation: {', '.join(can)}")
        if args.restore:
            ap.error("--helper and --restore: restore in the main invocation")
    return args


def main(argv: list[str] | None = None, *, log=None) -> dict:
    """Run the reproduction; returns the results.json dict. Subnormal floats are flushed
    throughout, in the worker threads started inside too (they inherit the mode)."""
    with flush_denormals():
        return _main(argv, log)


def _main(argv: list[str] | None, log) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    kw = {"data_dir": args.data_dir} if preset.dataset == "fashion-mnist" else {}
    splits = load_dataset(preset.dataset, **kw)
    command = "python scripts/reproduce_paper.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    ctx = Context(args.out, preset, splits, device=args.device, command=command, log=log,
                  helper=args.helper)
    ctx.say(f"preset {preset.name}, {splits.describe()}, device {ctx.device}, "
            f"{torch.get_num_threads()} thread(s); run folder {ctx.out}"
            + (" (helper)" if args.helper else ""))
    order, modules = experiments()
    todo = [e for e in order if args.only is None or e in args.only]
    if args.helper:
        for exp in todo:
            modules[exp].prefetch(ctx)
        ctx.save_run()
        return {}
    if args.restore:
        put = restore(ctx, Path(args.restore), skip=set(todo))
        ctx.say(f"restored from {args.restore}: {', '.join(put) or 'nothing (all present)'}")
    results = {e: r for e in order if (r := ctx.load_result(e)) is not None}
    data = _report(ctx, results, None, order)
    for exp in todo:
        if exp in results and (stale := ctx.stale_counts(exp, results[exp])):
            was = ", ".join(f"{k}={v}" for k, v in stale.items())
            now = ", ".join(f"{k}={getattr(preset, k)}" for k in stale)
            ctx.say(f"{exp}: measured with {was}, the preset asks {now}: measuring again "
                    f"(trained models are loaded)")
        elif exp in results:
            ctx.say(f"{exp}: already done (delete {ctx.result_path(exp)} to redo it)")
            continue
        results[exp] = modules[exp].run(ctx)
        ctx.save_result(exp, results[exp])
        # an invocation running other experiments beside this one may have finished some
        results = {e: r for e in order if (r := ctx.load_result(e)) is not None}
        data = _report(ctx, results, {exp}, order)
        ctx.say(f"{exp}: saved; report updated in {ctx.out / 'report'}")
    heads = {k: data[k] for k, (exp, *_) in HEADLINES.items() if exp in order}
    shown = ", ".join(f"{k} = {_fmt(v, k[:2].upper() in results)}" for k, v in heads.items())
    ctx.say(f"finished ({'complete' if data['complete'] else 'partial'}): {shown}")
    return data


def restore(ctx: Context, path: Path, skip: set[str]) -> list[str]:
    """Write the per-experiment results kept in a report's ``results.json`` (its ``experiments``)
    into ``ctx.out``, except ``skip`` and those already there; record the earlier run's commands
    as invocations (its wall time on the first), once. Returns the experiments written."""
    try:
        data = read_json(path)
        kept, meta = data["experiments"], data["meta"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"reproduce_paper.py: error: --restore {path}: not a report's "
                         f"results.json ({type(e).__name__}: {e})") from None
    if meta.get("preset") != ctx.preset.name:
        raise SystemExit(f"reproduce_paper.py: error: --restore {path}: preset "
                         f"{meta.get('preset')!r}, this run: {ctx.preset.name!r}")
    put = []
    for exp, result in kept.items():
        if exp not in skip and ctx.load_result(exp) is None:
            atomic_write_json(ctx.result_path(exp), result)  # as saved, counts included
            put.append(exp)
    run = read_json(ctx.out / RUN_FILE)
    if put and not any(str(i.get("id", "")).startswith("restored-") for i in run["invocations"]):
        start = datetime.fromisoformat(meta["started"])
        for k, command in enumerate(meta.get("commands") or [meta.get("command", "")]):
            run["invocations"].append({
                "id": f"restored-{k}", "started": meta["started"],
                "started_unix": start.timestamp(),
                "seconds": float(meta["wall_seconds"]) if k == 0 else 0.0,
                "command": command, "machine": meta.get("machine", ""), "restored_from": str(path)})
        atomic_write_json(ctx.out / RUN_FILE, run)
        ctx.run = run
    return put


def _fmt(value: float | None, done: bool) -> str:
    if value is None:
        return "n/a" if done else "pending"
    return f"{value:.3f}"


def _report(ctx: Context, results: dict, fresh: set[str] | None, order: list[str]) -> dict:
    wall = ctx.wall_seconds()
    inv = ctx.run["invocations"]
    meta = {
        "preset": ctx.preset.name, "quick": ctx.preset.name != "full",
        "command": ctx.invocation["command"],
        "commands": list(dict.fromkeys(i.get("command", "") for i in inv if i.get("command"))),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "started": inv[0]["started"], "machine": describe_machine(),
        "wall_seconds": wall, "invocations": len(inv),
        "data": ctx.splits.describe(),
        "dataset": _DATASET_TITLES.get(ctx.splits.name, ctx.splits.name),
        "settings": ctx.preset.as_dict(),
        "notes": list(ctx.preset.notes), "pid": os.getpid(),
    }
    return write_report(Path(ctx.out) / "report", results, meta, fresh, expected=order)
