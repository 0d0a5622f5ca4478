"""E1: a big regularised teacher distilled into an unregularised student (transfer set = training set).

Paper (sec. 3, MNIST): an MLP 2x1200 teacher with dropout and inputs jittered by up to 2 px (67 test
errors), an MLP 2x800 student on hard labels (146) and the same student distilled at T = 20 (74):
91% of the gap closed. Here, per row of the preset (row 1: that set-up on Fashion-MNIST; row 2: a
convnet teacher, a harder case for an MLP student, Urban et al. 2017):

* the teacher: each candidate recipe trained on hard labels, the best on validation kept; it must
  beat the unregularised student's validation accuracy by ``e1_min_margin`` ("clearly"), else the
  row says so and the margin found;
* the paper's recipe: T (and alpha) swept on the fixed training images (``distill_sweep``);
* view recipes: teacher and student see the same augmented views (V cached per image), T swept;
  the same student trained on hard labels on those views is the fair baseline of each;
* the recipe of the row is the best of these on validation (seed 0); the unregularised student,
  the paper's recipe and the best view recipe (and its fair baseline) are then measured over
  ``e1_seeds`` seeds. Gap closed = (distilled - hard) / (teacher - hard), with a 95% interval
  (bootstrap over test examples and seeds).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from torch import nn

from ensemble_kd import DistillConfig, ModelSpec, make_transfer_set
from ensemble_kd.run import Run

from . import presets
from .common import (
    Context,
    curve,
    gap_share_ci,
    late_change,
    scores,
    share_of_gap,
    summary,
    test_correct,
    test_predictions,
    widths_name,
)
from .presets import E1Row, TeacherRecipe

EXP = "E1"
PAPER = "paper"  # the recipe name of the paper's: fixed inputs, T swept


def student_spec(ctx: Context) -> ModelSpec:
    return ModelSpec("mlp", ctx.preset.e1_student_widths, 0.0)


def hard_folder(ctx: Context, seed: int) -> Path:
    return ctx.out / "e1" / "student_hard" / f"seed_{seed}"


def hard_student(ctx: Context, seed: int) -> nn.Module:
    """The unregularised student on hard labels (shared by every row, and E2's reference)."""
    p = ctx.preset
    return ctx.hard_model(hard_folder(ctx, seed), student_spec(ctx), seed, p.e1_student_epochs,
                          label=f"student {widths_name(p.e1_student_widths)} hard labels, "
                                f"seed {seed}")


def teacher_folder(ctx: Context, row: E1Row, recipe: TeacherRecipe) -> Path:
    return ctx.out / "e1" / row.name / f"teacher_{recipe.name}"


def row_teacher(ctx: Context, row: E1Row) -> tuple[nn.Module, list[dict], int]:
    """Every teacher candidate of ``row`` (trained or loaded) and the index of the best on
    validation; the models themselves are kept only for the best. When every candidate is
    finished they are only read, so another invocation may train E1's students meanwhile."""
    finished = all(Run(teacher_folder(ctx, row, r), writer=False).finished()
                   for r in row.teachers)
    ctx.claim("e1", ("e1_",), lock=not finished)
    infos, best, best_model = [], -1, None
    for recipe in row.teachers:
        folder = teacher_folder(ctx, row, recipe)
        m = ctx.hard_model(folder, ModelSpec(recipe.arch, recipe.widths, recipe.dropout), 0,
                           recipe.epochs, views=recipe.views(), lr=recipe.lr,
                           label=f"{row.name} teacher {recipe.name}")
        info = {**dataclasses.asdict(recipe), "name": recipe.name, **scores(m, ctx),
                "curve": curve(folder)}
        info["late_change"] = late_change(info["curve"])
        infos.append(info)
        if best < 0 or info["val_acc"] > infos[best]["val_acc"]:
            best, best_model = len(infos) - 1, m
    return best_model, infos, best


def _configs(ts, alphas, views=None) -> list[DistillConfig]:
    return [DistillConfig(temperature=float(t), alpha=float(a), views=views)
            for t in ts for a in alphas]


def recipe_folder(ctx: Context, row: E1Row, recipe: str, teacher: str) -> Path:
    """Where the students of ``recipe`` distilled from the teacher named ``teacher`` live: keyed by
    the teacher, so that a new teacher candidate never reuses another teacher's students."""
    return ctx.out / "e1" / row.name / f"from_{teacher}" / recipe


def baseline_folder(ctx: Context, recipe: str) -> Path:
    """The fair baseline of a view recipe (hard labels on its views): no teacher involved, so
    every row's students of that recipe are compared with the same models."""
    return ctx.out / "e1" / f"student_hard_{recipe}"


def planned(ctx: Context) -> int:
    p = ctx.preset
    paper = len(p.e1_temperatures) * len(p.e1_alphas)
    view = len(p.e1_view_temperatures) * len(p.e1_alphas)
    per_row = (paper + len(p.e1_view_recipes) * view + 2 * (p.e1_seeds - 1) + p.e1_seeds)
    return p.e1_seeds + sum(len(r.teachers) + per_row for r in p.e1_rows)


def run(ctx: Context) -> dict:
    """Train (or load) every model of E1 and return its numbers (JSON-able)."""
    p = ctx.preset
    ctx.claim("e1", ("e1_",))
    ctx.begin(EXP, planned(ctx))
    hard, hard_ok = _hard_students(ctx)
    out = {
        "student_widths": list(p.e1_student_widths), "student_epochs": p.e1_student_epochs,
        "view_epochs": p.e1_view_epochs, "views": p.e1_views, "seeds": p.e1_seeds,
        "min_margin": p.e1_min_margin, "temperatures": list(p.e1_temperatures),
        "view_temperatures": list(p.e1_view_temperatures), "alphas": list(p.e1_alphas),
        "hard": hard, "rows": [],
    }
    for row in p.e1_rows:
        out["rows"].append(_row(ctx, row, out["hard"], hard_ok))
    first = out["rows"][0]
    clear = first["teacher_clearly_better"]
    out["headline_gap_closed"] = first["gap_closed"] if clear else None
    out["headline_gap_closed_ci"] = first["gap_closed_ci"] if clear else None
    out["headline_agreement"] = first["chosen"]["agreement"]["mean"]
    g = first["gap_closed"]
    ctx.say(f"{EXP}: done; {first['name']} row, recipe {first['chosen']['recipe']}: gap closed "
            f"{'n/a' if g is None else f'{100 * g:.0f}%'}"
            + ("" if first["teacher_clearly_better"] else
               f" (teacher not clearly better: margin {100 * first['margin']:+.2f} points)"))
    return out


def prefetch(ctx: Context) -> None:
    """Train the models of E1 that a second invocation (``--helper``) can train beside the main
    one, which loads them, or waits for those still in training: the fair baselines (when there
    is one view recipe; otherwise the kept one is known only after the sweeps), then every row
    but the first (teacher, candidates, seeds) while the main invocation trains the first row's.
    Saves no result. The rows need the hard-label students, trained first by the main one."""
    p = ctx.preset
    ctx.claim("e1", ("e1_",))  # settings only: a helper holds single units
    ctx.begin(EXP, planned(ctx))
    if len(p.e1_view_recipes) == 1:
        transfer = make_transfer_set(ctx.splits)
        (recipe,) = p.e1_view_recipes
        for seed in range(p.e1_seeds):
            fair_baseline(ctx, recipe, seed, transfer)
    if len(p.e1_rows) > 1:
        hard, hard_ok = _hard_students(ctx)
        for row in p.e1_rows[1:]:
            _row(ctx, row, hard, hard_ok)
    ctx.say(f"{EXP}: helper done")


def _hard_students(ctx: Context) -> tuple[dict, np.ndarray]:
    """The hard-label students' scores over seeds and their per-example correctness (S, N)."""
    seeds = range(ctx.preset.e1_seeds)
    models = [hard_student(ctx, s) for s in seeds]
    curves = [curve(hard_folder(ctx, s)) for s in seeds]
    hard = {**_agg([scores(m, ctx) for m in models]), "curves": curves,
            "late_change": [late_change(c) for c in curves]}
    return hard, np.stack([test_correct(m, ctx) for m in models])


def fair_baseline(ctx: Context, recipe: str, seed: int, transfer) -> nn.Module:
    """The fair baseline of a view recipe: the student on hard labels, on the very same views
    and for as many epochs as its distilled students (shared by every row)."""
    p = ctx.preset
    return ctx.hard_model(baseline_folder(ctx, recipe) / f"seed_{seed}", student_spec(ctx), seed,
                          p.e1_view_epochs, transfer=transfer,
                          views=presets.views(recipe, p.e1_views),
                          label=f"student {widths_name(p.e1_student_widths)}, hard labels on "
                                f"views {recipe}, seed {seed}")


def _row(ctx: Context, row: E1Row, hard: dict, hard_ok: np.ndarray) -> dict:
    p, s = ctx.preset, ctx.splits
    teacher, candidates, best = row_teacher(ctx, row)
    t_info = candidates[best]
    margin = t_info["val_acc"] - hard["val_acc"]["mean"]
    teacher_ok = test_correct(teacher, ctx)[None]  # (1, N)
    teacher_pred = test_predictions(teacher, ctx)
    transfer = make_transfer_set(s)
    spec = student_spec(ctx)
    name = widths_name(p.e1_student_widths)

    # selection on seed 0: the paper's recipe and every view recipe, each with its T sweep
    sweeps = {}
    tname = t_info["name"]
    res = ctx.sweep(recipe_folder(ctx, row, PAPER, tname) / "sweep", spec, 0, p.e1_student_epochs,
                    [teacher], transfer, _configs(p.e1_temperatures, p.e1_alphas),
                    label=f"{row.name}: student {name}, paper's recipe")
    sweeps[PAPER] = res
    for r in p.e1_view_recipes:
        v = presets.views(r, p.e1_views)
        sweeps[r] = ctx.sweep(recipe_folder(ctx, row, r, tname) / "sweep", spec, 0, p.e1_view_epochs,
                              [teacher], transfer,
                              _configs(p.e1_view_temperatures, p.e1_alphas, v),
                              label=f"{row.name}: student {name}, views {r}")
    best_view = max(p.e1_view_recipes, key=lambda r: _kept(sweeps[r]).val_acc)
    chosen = max([PAPER, best_view], key=lambda r: _kept(sweeps[r]).val_acc)

    recipes = {}
    for r in (PAPER, best_view):
        recipes[r] = _measure(ctx, row, r, sweeps[r], teacher, transfer, hard, hard_ok,
                              teacher_ok, teacher_pred, t_info)
    out = {
        "name": row.name, "teacher_candidates": candidates, "teacher": t_info,
        "margin": margin, "teacher_clearly_better": bool(margin >= p.e1_min_margin),
        "sweeps": {r: [c._asdict() for c in sw.candidates] for r, sw in sweeps.items()},
        "kept": {r: _kept(sw)._asdict() for r, sw in sweeps.items()},
        "best_view_recipe": best_view, "recipes": recipes, "chosen": recipes[chosen],
    }
    out["chosen"]["recipe"] = chosen
    out["gap_closed"] = out["chosen"]["gap_closed"]
    out["gap_closed_ci"] = out["chosen"]["gap_closed_ci"]
    return out


def _kept(sw):
    return sw.candidates[sw.best]


def _measure(ctx: Context, row: E1Row, recipe: str, sw, teacher, transfer, hard: dict,
             hard_ok: np.ndarray, teacher_ok: np.ndarray, teacher_pred: np.ndarray,
             t_info: dict) -> dict:
    """The recipe's kept setting over every seed (seed 0 is the sweep's), plus, for views, the
    fair baseline (hard labels on the same views)."""
    p = ctx.preset
    kept = _kept(sw)
    views = None if recipe == PAPER else presets.views(recipe, p.e1_views)
    epochs = p.e1_student_epochs if recipe == PAPER else p.e1_view_epochs
    cfg = DistillConfig(temperature=kept.temperature, alpha=kept.alpha, views=views)
    folder = recipe_folder(ctx, row, recipe, t_info["name"])
    spec, name = student_spec(ctx), widths_name(p.e1_student_widths)
    models, folders = [sw.model], [Path(kept.folder)]
    for seed in range(1, p.e1_seeds):
        f = folder / f"seed_{seed}"
        models.append(ctx.distilled_model(
            f, spec, seed, epochs, [teacher], transfer, cfg, folder / "sweep" / "cache",
            label=f"{row.name}: student {name}, {recipe}, seed {seed}"))
        folders.append(f)
    res = [scores(m, ctx) for m in models]
    ok = np.stack([test_correct(m, ctx) for m in models])  # (S, N)
    agree = [float((test_predictions(m, ctx) == teacher_pred).mean()) for m in models]
    curves = [curve(f) for f in folders]
    out = {"recipe": recipe, "temperature": kept.temperature, "alpha": kept.alpha,
           "epochs": epochs, **_agg(res), "agreement": summary(agree), "curves": curves,
           "late_change": [late_change(c) for c in curves]}
    out["gap_closed"] = share_of_gap(hard["test_acc"]["mean"], t_info["test_acc"],
                                     out["test_acc"]["mean"])
    out["gap_closed_ci"] = gap_share_ci(ctx, hard_ok, teacher_ok, ok)
    if views is not None:  # the fair baseline: hard labels on the very same views
        bfolder = baseline_folder(ctx, recipe)
        base = [fair_baseline(ctx, recipe, seed, transfer) for seed in range(p.e1_seeds)]
        bres = [scores(m, ctx) for m in base]
        out["fair_baseline"] = {**_agg(bres),
                                "curves": [curve(bfolder / f"seed_{s}")
                                           for s in range(p.e1_seeds)]}
        out["gain_over_fair_baseline"] = summary(
            [a["test_acc"] - b["test_acc"] for a, b in zip(res, bres, strict=True)])
    return out


def _agg(runs: list[dict]) -> dict:
    return {k: summary([r[k] for r in runs]) for k in ("test_acc", "test_errors", "val_acc")}
