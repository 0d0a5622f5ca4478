"""E5: specialists for the classes the generalist confuses.

Paper (sec. 5, JFT): 61 specialists on a 25%-accurate generalist raised test accuracy from 25.0% to
26.1% (4.4% relative; a 1.5% relative *error* reduction), conditional accuracy 43.1% -> 45.9%, and
the gain grew with the number of specialists covering the true class. Here: each generalist is one
of the MLP members (``paper.members``); its *validation* confusion is clustered
(``specialists.analyse``), the clusters become subsets (``choose_subsets``, one overlapping class
added to each so that some classes are covered twice), one dustbin specialist is trained per subset
from the generalist's weights (``train_specialists``), and the test predictions are combined with
``combine_predictions`` and scored with ``evaluate_specialists`` (top-n = 1). The relative
test-error reduction is pooled over the generalists (their errors summed), with a 95% paired-bootstrap
interval over test examples.
"""

from __future__ import annotations

import numpy as np
import torch

from ensemble_kd import predict_probs
from ensemble_kd.metrics import paired_bootstrap_ci
from specialists import (
    SpecialistConfig,
    analyse,
    combine_predictions,
    evaluate_specialists,
    specialist_probs,
    subsets_for_generalist,
    train_specialists,
)

from .common import Context, summary
from .members import PREFIX, mlp_members

EXP = "E5"


def planned(ctx: Context) -> int:
    return ctx.preset.members_count  # the generalists; specialists get their own lines


def run(ctx: Context) -> dict:
    p, s = ctx.preset, ctx.splits
    ctx.claim("e5", (PREFIX, "e5_"))
    ctx.begin(EXP, planned(ctx))
    teachers = mlp_members(ctx)
    runs, correct = [], []  # correct: per scored generalist, (generalist, combined) (N,) bools
    for g in range(min(p.e5_generalists, len(teachers))):
        gen = teachers[g]
        analysis = analyse(predict_probs(gen, s.x_val, device=ctx.device), s.y_val,
                           class_names=s.class_names, n_clusters=p.e5_n_clusters,
                           kind="confusion", random_state=0)
        subsets, why = subsets_for_generalist(
            analysis.counts,
            train_probs=lambda gen=gen: predict_probs(gen, s.x_train, device=ctx.device).numpy(),
            train_labels=s.y_train.numpy(), class_names=list(s.class_names), overlap=p.e5_overlap,
            max_subset_size=p.e5_max_subset_size)
        entry = {"generalist": g, "clusters": analysis.clusters, "subsets": subsets,
                 "subset_names": [[s.class_names[c] for c in sub] for sub in subsets],
                 "val_confusion": analysis.counts.tolist(), "subset_source": why}
        if not subsets:
            entry["note"] = why
            runs.append(entry)
            continue
        names = "; ".join("{" + ", ".join(n) + "}" for n in entry["subset_names"])
        folder = ctx.out / "e5" / f"generalist_{g}"
        done = all((folder / f"specialist_{m}" / "model.pt").exists() for m in range(len(subsets)))
        ctx.say(f"{EXP} generalist {g + 1}/{p.e5_generalists}: {len(subsets)} specialists "
                f"{'already trained, loading' if done else 'training'}: {names}")
        sps = train_specialists(
            gen, subsets, s,
            ctx.train_config(p.e5_epochs, g, lr=p.e5_lr, early_stopping=p.e5_early_stopping),
            SpecialistConfig(alpha=p.e5_alpha, jitter=p.e5_shift, calibration=p.e5_calibration),
            folder, device=ctx.device,
        )
        for m in range(len(subsets)):
            ck = folder / f"specialist_{m}" / "checkpoint.pt"
            if ck.exists():
                ck.unlink()  # the specialist is saved; its checkpoint only served a resume
        p_g = predict_probs(gen, s.x_test, device=ctx.device)  # (N, C)
        p_ms = specialist_probs(sps, s.x_test, device=ctx.device)
        combined = combine_predictions(p_g, p_ms, subsets, top_n=1)  # (N, C), solved once
        res = evaluate_specialists(p_g, p_ms, subsets, s.y_test, top_n=1,
                                   combine=lambda *_, done=combined, **__: done)
        entry.update(res)
        entry["by_class"] = _by_class(p_g.argmax(1), combined.argmax(1), s.y_test,
                                      s.class_names)
        cover = sum(np.isin(s.y_test.numpy(), sub) for sub in subsets)  # (N,) covering the truth
        correct.append(((p_g.argmax(1) == s.y_test).numpy(),
                        (combined.argmax(1) == s.y_test).numpy(), cover))
        runs.append(entry)
        ctx.say(f"{EXP} generalist {g + 1}: test accuracy {100 * res['generalist_acc']:.2f}% -> "
                f"{100 * res['combined_acc']:.2f}% with the specialists")
        ctx.save_run()
    scored = [r for r in runs if "relative_gain" in r]
    out = {"runs": runs, "epochs": p.e5_epochs, "lr": p.e5_lr, "overlap": p.e5_overlap,
           "max_subset_size": p.e5_max_subset_size, "alpha": p.e5_alpha,
           "early_stopping": p.e5_early_stopping, "shift": p.e5_shift,
           "calibration": p.e5_calibration, "top_n": 1}
    for key in ("generalist_acc", "combined_acc", "relative_gain", "relative_error_reduction",
                "generalist_conditional_acc", "combined_conditional_acc"):
        out[key] = summary([r[key] for r in scored if r[key] is not None])
    out["by_coverage"] = _pooled_coverage(scored)
    out["by_class"] = _pooled_by_class(scored)
    out["headline_relative_gain"] = out["relative_gain"]["mean"]
    out["gain_by_coverage"] = {str(r["covering"]): r["relative_change"]
                               for r in out["by_coverage"] if r["covering"] in (1, 2)}
    out["pooled_relative_error_reduction"] = None
    out["relative_error_reduction_ci"] = None
    out["gain_by_coverage_ci"] = None
    if correct:
        g_ok = np.stack([g for g, _, _ in correct])  # (G, N)
        c_ok = np.stack([c for _, c, _ in correct])
        cov = np.stack([k for _, _, k in correct])  # (G, N) specialists covering the true class
        ci = paired_bootstrap_ci(_error_reduction, [g_ok, c_ok], n_boot=p.n_boot)
        out["pooled_relative_error_reduction"] = ci.estimate
        out["relative_error_reduction_ci"] = ci.as_list()
        # does the gain shrink from one covering specialist to two? intervals over test examples
        by = {}
        for key, fn in (("1", lambda g, c, k: _coverage_change(g, c, k, 1)),
                        ("2", lambda g, c, k: _coverage_change(g, c, k, 2)),
                        ("2_minus_1", _coverage_difference)):
            b = paired_bootstrap_ci(fn, [g_ok, c_ok, cov], n_boot=p.n_boot)
            by[key] = {"estimate": b.estimate, "ci": b.as_list()}
        out["gain_by_coverage_ci"] = by
    out["headline_relative_error_reduction"] = out["pooled_relative_error_reduction"]
    rg, re_ = out["relative_gain"], out["relative_error_reduction"]
    ctx.say(f"{EXP}: done; relative gain in test accuracy {_pct(rg['mean'])}, relative error "
            f"reduction {_pct(re_['mean'])} (mean of {rg['n']} generalist(s))")
    return out


def _error_reduction(gen_ok: np.ndarray, comb_ok: np.ndarray) -> float | None:
    """1 - (errors with specialists) / (errors of the generalists), summed over generalists."""
    errors = (~gen_ok).sum()
    return None if errors == 0 else float(1 - (~comb_ok).sum() / errors)


def _coverage_change(gen_ok: np.ndarray, comb_ok: np.ndarray, cover: np.ndarray,
                     k: int) -> float | None:
    """Relative change in correct answers on the examples whose true class k specialists cover,
    all generalists pooled: (combined correct - generalist correct) / generalist correct."""
    sel = cover == k
    base = gen_ok[sel].sum()
    return None if base == 0 else float((comb_ok[sel].sum() - base) / base)


def _coverage_difference(gen_ok: np.ndarray, comb_ok: np.ndarray,
                         cover: np.ndarray) -> float | None:
    """The relative change at coverage 2 minus that at coverage 1 (< 0: the gain shrinks)."""
    one, two = (_coverage_change(gen_ok, comb_ok, cover, k) for k in (1, 2))
    return None if one is None or two is None else two - one


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _by_class(gen_pred: torch.Tensor, comb_pred: torch.Tensor, y: torch.Tensor,
              names) -> list[dict]:
    """Per class: test examples, correct (recall's numerator) and predicted counts of the
    generalist and of the combination; a class can gain recall and lose predictions at once."""
    rows = []
    for c, name in enumerate(names):
        is_c = y == c
        rows.append({"class": c, "name": name, "n": int(is_c.sum()),
                     "generalist_correct": int((gen_pred[is_c] == c).sum()),
                     "combined_correct": int((comb_pred[is_c] == c).sum()),
                     "generalist_predicted": int((gen_pred == c).sum()),
                     "combined_predicted": int((comb_pred == c).sum())})
    return rows


def _pooled_by_class(runs: list[dict]) -> list[dict]:
    """The per-class rows of every generalist, summed class by class."""
    keys = ("n", "generalist_correct", "combined_correct", "generalist_predicted",
            "combined_predicted")
    pooled: dict[int, dict] = {}
    for r in runs:
        for row in r["by_class"]:
            acc = pooled.setdefault(row["class"], {"class": row["class"], "name": row["name"],
                                                   **{k: 0 for k in keys}})
            for k in keys:
                acc[k] += row[k]
    return [pooled[c] for c in sorted(pooled)]


def _pooled_coverage(runs: list[dict]) -> list[dict]:
    """The coverage tables of every generalist, summed row by row (same 'covering' count)."""
    rows: dict[int, dict] = {}
    for r in runs:
        for row in r["by_coverage"]:
            k = row["covering"]
            acc = rows.setdefault(k, {"covering": k, "label": row["label"], "n": 0,
                                      "generalist_correct": 0, "combined_correct": 0})
            for key in ("n", "generalist_correct", "combined_correct"):
                acc[key] += row[key]
    out = []
    for k in sorted(rows):
        row = rows[k]
        row["change"] = row["combined_correct"] - row["generalist_correct"]
        g = row["generalist_correct"]
        row["relative_change"] = row["change"] / g if g else None
        out.append(row)
    return out
