"""The comparison table of a run's models on the test set, written as summary.json and summary.md."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from .. import distributed as dist
from ..data import Splits
from ..ensemble import ensemble_report
from ..io import atomic_write_json, atomic_write_text
from ..metrics import accuracy, agreement, evaluate, format_table, kl_divergence, per_class_accuracy
from ..models import count_parameters
from ..predict import inference_ms, predict_logits
from .config import RunConfig
from .context import Ctx

COLUMNS = ["model", "params", "accuracy", "error", "top5", "nll", "ece"]


def row(name: str, probs: torch.Tensor, y: torch.Tensor, params: int | None) -> dict:
    """One table row: the model's name, size and test metrics."""
    return {"model": name, "params": params, **evaluate(probs, y)}


def _per_class(probs: torch.Tensor, y: torch.Tensor, n_classes: int) -> list[float | None]:
    """Per-class accuracy, None for a class without test examples (JSON has no NaN)."""
    return [None if a != a else a for a in per_class_accuracy(probs, y, n_classes)]


def comparison(ctx: Ctx, splits: Splits, teachers, baseline, student,
               student_meta: dict | None = None) -> tuple[list[dict], dict]:
    """Test-set rows for every teacher, the ensemble, the baseline and the distilled student,
    and the headline keys (accuracies, fidelity to the ensemble, settings kept, inference cost)."""
    x, y = splits.x_test, splits.y_test
    rows, extra = [], {}
    ens_probs = None
    if teachers:
        rep = ensemble_report(teachers, x, y, device=ctx.device)
        for k, (m, r) in enumerate(zip(teachers, rep["members"], strict=True)):
            rows.append({"model": f"teacher {k}", "params": count_parameters(m), **r})
        accs = torch.tensor([r["accuracy"] for r in rep["members"]])
        extra["ensemble_accuracy"] = rep["ensemble"]["accuracy"]
        extra["teacher_accuracy_mean"] = float(accs.mean())
        extra["teacher_accuracy_std"] = float(accs.std()) if len(accs) > 1 else 0.0
        extra["teacher_disagreement"] = rep["disagreement"]
        rows.append({"model": f"ensemble of {len(teachers)}",
                     "params": sum(count_parameters(m) for m in teachers), **rep["ensemble"]})
        extra["per_class_accuracy"] = {f"ensemble of {len(teachers)}": _per_class(
            rep["probs"], y, splits.n_classes)}
        ens_probs = rep["probs"]
    for key, name, m in (("baseline", "baseline student (hard labels)", baseline),
                         ("distilled", "distilled student", student)):
        if m is not None:
            probs = torch.softmax(predict_logits(m, x, device=ctx.device), -1)
            rows.append(row(name, probs, y, count_parameters(m)))
            extra[f"{key}_accuracy"] = rows[-1]["accuracy"]
            extra.setdefault("per_class_accuracy", {})[name] = _per_class(probs, y, splits.n_classes)
            if key == "distilled" and ens_probs is not None:
                extra["agreement"] = agreement(probs, ens_probs)
                extra["kl_to_ensemble"] = kl_divergence(ens_probs, probs)
    if baseline is not None and student is not None:
        v = ctx.cfg.view_config()
        seen = "the transfer set as it is" if v is None else "views " + v.settings_text()
        if ctx.cfg.student_jitter:
            seen += f", shifted up to {ctx.cfg.student_jitter} px"
        extra["inputs_seen"] = (f"baseline and distilled student: same initial weights, "
                                f"{ctx.cfg.epochs} epochs each, on {seen}")
    if student is not None and student_meta:
        extra["distilled_temperature"] = student_meta.get("temperature")
        alphas = ctx.cfg.alphas()  # 0.1.0 saved no alpha: the run's own when it had one
        extra["distilled_alpha"] = student_meta.get("alpha", alphas[0] if len(alphas) == 1 else None)
        extra.update(_verdict(ctx, splits, baseline, student, student_meta))
    extra.update(_costs(ctx, x, teachers, student if student is not None else baseline))
    extra["class_names"] = list(splits.class_names)
    return rows, extra


def training_settings(cfg: RunConfig, *, teachers: bool = False, students: bool = False,
                      specialists: bool = False) -> str:
    """What the models of a run were trained with (its "auto" options as decided), for summary.md."""
    def recipe(t) -> str:
        return (f"{t.epochs} epochs, batch {t.batch_size}, {t.optimizer}, lr {t.lr:g}, "
                f"weight decay {t.weight_decay:g}, {t.schedule} schedule")

    lines = ["Training settings (options left at auto were decided from the data when the run "
             "started; config.json records them):", ""]
    if teachers:
        lines.append(f"- teachers: {cfg.teachers} x {cfg.teacher_arch} {cfg.teacher_widths}, "
                     f"dropout {cfg.teacher_dropout:g}, shifts up to {cfg.teacher_jitter} px"
                     f"{f', mixup {cfg.teacher_mixup:g}' if cfg.teacher_mixup else ''}; "
                     f"{recipe(cfg.teacher_train_config())}")
    if students:
        lines.append(f"- baseline and distilled student: {cfg.student_arch} {cfg.student_widths}, "
                     f"dropout {cfg.student_dropout:g}; {recipe(cfg.train_config())}")
    if specialists:
        lines.append(f"- specialists: {recipe(cfg.train_config(cfg.specialist_epochs))}")
    return "\n".join(lines)


def _costs(ctx: Ctx, x: torch.Tensor, teachers, single) -> dict:
    """Parameters and milliseconds per batch of 256 of the ensemble and of the student."""
    xb, out = x[:256], {}
    for key, models in (("ensemble", list(teachers or [])), ("student", [single] if single else [])):
        if models:
            out[f"{key}_params"] = sum(count_parameters(m) for m in models)
            out[f"{key}_ms_per_256"] = inference_ms(models, xb, device=ctx.device)
    return out


def _verdict(ctx: Ctx, splits: Splits, baseline, student, meta: dict) -> dict:
    """The candidates' table and, when the kept student is worse than the baseline on validation,
    a warning (printed and in summary.md) with what to try."""
    out: dict = {}
    cands = meta.get("candidates") or []
    if len(cands) > 1:
        lines = ["| T | alpha | validation accuracy | validation NLL | kept |", "|---:|---:|---:|---:|:---:|"]
        kept = (meta.get("temperature"), meta.get("alpha"))
        for c in cands:
            mark = "yes" if (c["temperature"], c["alpha"]) == kept else ""
            lines.append(f"| {c['temperature']:g} | {c['alpha']:g} | {c['val_acc']:.4f} | "
                         f"{c['val_nll']:.4f} | {mark} |")
        out["candidates"] = cands
        out["candidates_table"] = "Distillation candidates (validation split):\n\n" + "\n".join(lines)
    if baseline is None:
        return out
    val = (splits.x_val, splits.y_val)
    b = accuracy(predict_logits(baseline, val[0], device=ctx.device), val[1])
    kept_acc = accuracy(predict_logits(student, val[0], device=ctx.device), val[1])
    out["baseline_val_accuracy"] = b
    out["distilled_val_accuracy"] = kept_acc
    if kept_acc < b:
        out["warning"] = (
            f"WARNING: the distilled student is worse than its hard-label baseline on the "
            f"validation split ({100 * kept_acc:.2f}% vs {100 * b:.2f}%). Try: "
            + what_to_try(len(cands) or 1)
        )
        print(out["warning"], file=sys.stderr, flush=True)  # even with --quiet
    return out


def what_to_try(n_candidates: int) -> str:
    """The advice of the worse-than-baseline warning (README "On Fashion-MNIST": a student its
    teachers barely beat did best at T = 1 with alpha 0.5, the lower of the two tried)."""
    tips = []
    if n_candidates < 2:
        tips.append("several temperatures and alphas (--temperature auto --alpha auto)")
    tips += ["T = 1 with alpha 0.5 (--temperature 1 --alpha 0.5) when the teachers are barely "
             "better than the baseline",
             "more epochs (distillation converges more slowly)",
             "better teachers (the ensemble must beat the baseline by a clear margin)"]
    return ", ".join(tips) + "."


def write_summary(ctx: Ctx, out: Path, rows: list[dict], extra: dict, title: str,
                  name: str = "summary") -> str:
    """Write ``out/<name>.json`` and ``out/<name>.md`` (rank 0 only) and print the table."""
    table = format_table(rows, COLUMNS)
    if not dist.is_main():
        return table
    notes = [f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in extra.items()
             if not isinstance(v, (dict, list)) and not (isinstance(v, str) and "\n" in v)]
    text = f"# {title}\n\n{table}\n\n" + "\n".join(notes) + "\n"
    for v in extra.values():
        if isinstance(v, str) and "\n" in v:
            text += f"\n{v}\n"
    atomic_write_json(out / f"{name}.json", {"rows": rows, **extra,
                                             "seconds": time.perf_counter() - ctx.t0})
    atomic_write_text(out / f"{name}.md", text)
    print(table)
    if "coverage_table" in extra:
        print("\n" + extra["coverage_table"])
    return table
