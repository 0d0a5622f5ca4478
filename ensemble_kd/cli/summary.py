"""The comparison table of a run's models on the test set, written as summary.json and summary.md."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import distributed as dist
from ..data import Splits
from ..ensemble import ensemble_report
from ..io import atomic_write_json, atomic_write_text
from ..metrics import evaluate, format_table, per_class_accuracy
from ..models import count_parameters
from ..predict import predict_logits
from .context import Ctx

COLUMNS = ["model", "params", "accuracy", "error", "top5", "nll", "ece"]


def row(name: str, probs: torch.Tensor, y: torch.Tensor, params: int | None) -> dict:
    """One table row: the model's name, size and test metrics."""
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
            rows.append(row(name, probs, y, count_parameters(m)))
            extra.setdefault("per_class_accuracy", {})[name] = _per_class(probs, y, splits.n_classes)
    extra["class_names"] = list(splits.class_names)
    return rows, extra


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
