"""E3: an ensemble of models with the student's architecture and recipe, distilled into one.

Paper (sec. 4, speech): single model 58.9% frame accuracy, ensemble of 10 61.1%, distilled single
model 60.8%: 86% of the ensemble's gain kept (hard-label weight 0.5, T in {1, 2, 5, 10}). Here: 10
models of one architecture (``e3_arch``: small convnets in the full preset; ten MLPs 2x512 gained
only 0.27 points) and recipe (dropout, and optionally augmented views drawn afresh every epoch with
a view seed of their own), differing by seed: their diversity comes from seeds, dropout and
augmentation, not from weaker members. Each member *is* a single model trained on hard labels, so
the baseline is their mean. The distilled students have the same architecture and recipe (their
dropout a candidate: soft targets regularise already), and the members' budget or a longer one
(``e3_student_epochs``): they see V cached views of the same augmentation, labelled by the
ensemble (one KL term per member, the paper's multi-task loss), T and the students' dropout chosen
on validation (one ``distill_sweep`` per dropout, seed 0), then ``e3_seeds`` seeds. The kept share
(distilled - mean member) / (ensemble - mean member) comes with a 95% interval: bootstrap over test
examples, student seeds and members. Students longer than the members get a control: one model of
their architecture, budget, views and first seed trained on hard labels alone, so the report shows
what the longer budget gives without the ensemble.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from ensemble_kd import DistillConfig, ModelSpec, ensemble_probs, make_transfer_set
from ensemble_kd.sweep import SweepResult

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
    widths_name,
)

EXP = "E3"


def member_folder(ctx: Context, k: int) -> Path:
    return ctx.out / "e3" / "members" / f"member_{k}"


def spec(ctx: Context, dropout: float | None = None) -> ModelSpec:
    """The members' model (``dropout`` None), or the student's with its own dropout."""
    p = ctx.preset
    return ModelSpec(p.e3_arch, p.e3_widths, p.e3_dropout if dropout is None else dropout)


def _suffix(ctx: Context, dropout: float) -> str:
    """Folder suffix of a student dropout: none for the members' own (the first design's names)."""
    return "" if dropout == ctx.preset.e3_dropout else f"_d{dropout:g}"


def model_name(p: presets.Preset) -> str:
    """E3's architecture in words, e.g. ``cnn 16x32``."""
    return f"{p.e3_arch} {widths_name(p.e3_widths)}"


def e3_teachers(ctx: Context, order: range | None = None) -> list[nn.Module]:
    """The ensemble's members, in the order of k (``order``: train them in that order).
    Member k: seed k, views drawn with view seed k."""
    ctx.claim("e3", ("e3_",))
    p = ctx.preset
    ks = range(p.e3_teachers) if order is None else order
    got = {k: ctx.hard_model(member_folder(ctx, k), spec(ctx), k, p.e3_epochs, lr=p.e3_lr,
                             views=presets.views(p.e3_member_views, None, seed=k),
                             label=f"member {k + 1}/{p.e3_teachers} {model_name(p)}")
           for k in ks}
    return [got[k] for k in sorted(got)]


def prefetch(ctx: Context) -> None:
    """Train E3's models beside the main invocation (``--helper``), each from the last one down
    while the main invocation goes from the first one up: the members, then the students'
    candidates, then (once the main invocation has chosen on validation) the students' other
    seeds. Units held by one invocation are waited for, and loaded, by the other. Saves no
    result."""
    p = ctx.preset
    ctx.claim("e3", ("e3_",))  # a helper holds single units, not the folder
    ctx.begin(EXP, planned(ctx))
    members = e3_teachers(ctx, order=range(p.e3_teachers - 1, -1, -1))
    _students(ctx, members, helper=True)
    ctx.say(f"{EXP}: helper done")


def planned(ctx: Context) -> int:
    p = ctx.preset
    return (p.e3_teachers + len(student_dropouts(p)) * len(p.e3_temperatures) * len(p.e3_alphas)
            + p.e3_seeds - 1 + has_control(p))


def student_epochs(p: presets.Preset) -> int:
    """The students' budget: ``e3_student_epochs``, or the members' ``e3_epochs``."""
    return p.e3_epochs if p.e3_student_epochs is None else p.e3_student_epochs


def has_control(p: presets.Preset) -> bool:
    """Whether the students train longer than the members, so that a control is trained."""
    return student_epochs(p) != p.e3_epochs


def control_folder(ctx: Context, dropout: float) -> Path:
    """The control of the students of dropout ``dropout`` (:func:`has_control`)."""
    return students_folder(ctx) / f"control{_suffix(ctx, dropout)}"


def students_folder(ctx: Context) -> Path:
    """``e3/students``, or ``e3/students_e<epochs>`` when the students train longer than the
    members (a setting added later never changes the models of an existing folder)."""
    p = ctx.preset
    name = "students" if not has_control(p) else f"students_e{student_epochs(p)}"
    return ctx.out / "e3" / name


def student_dropouts(p: presets.Preset) -> list[float]:
    """The students' dropout candidates: the members' own first, then the preset's others."""
    return list(dict.fromkeys((p.e3_dropout, *p.e3_student_dropouts)))


def run(ctx: Context) -> dict:
    p, s = ctx.preset, ctx.splits
    ctx.claim("e3", ("e3_",))
    ctx.begin(EXP, planned(ctx))
    members = e3_teachers(ctx)
    member_scores = [scores(m, ctx) for m in members]
    members_ok = np.stack([test_correct(m, ctx) for m in members])  # (K, N)
    ens_test = ensemble_probs(members, s.x_test, device=ctx.device)  # (N, C)
    ens_val = ensemble_probs(members, s.x_val, device=ctx.device)
    ens_ok = (ens_test.argmax(1) == s.y_test).numpy()[None]  # (1, N)
    ensemble = {"test_acc": float(ens_ok.mean()), "test_errors": int((~ens_ok).sum()),
                "val_acc": float((ens_val.argmax(1) == s.y_val).double().mean())}
    single = {k: summary([m[k] for m in member_scores])
              for k in ("test_acc", "test_errors", "val_acc")}

    sweeps, dropout, students, folders, control = _students(ctx, members)
    sw = sweeps[dropout]
    kept = sw.candidates[sw.best]
    runs = [scores(m, ctx) for m in students]
    students_ok = np.stack([test_correct(m, ctx) for m in students])  # (S, N)
    acc = summary([r["test_acc"] for r in runs])
    gain_kept = share_of_gap(single["test_acc"]["mean"], ensemble["test_acc"], acc["mean"])
    # hard labels at the students' budget, views and first seed (None: the members' budget)
    control_scores = None if control is None else scores(control, ctx)
    student_probs = ensemble_probs(students[:1], s.x_test, device=ctx.device)
    member_curves = [curve(member_folder(ctx, k)) for k in range(p.e3_teachers)]
    student_curves = [curve(f) for f in folders]
    out = {
        "arch": p.e3_arch, "widths": list(p.e3_widths), "dropout": p.e3_dropout,
        "epochs": p.e3_epochs, "student_epochs": student_epochs(p),
        "lr": p.lr if p.e3_lr is None else p.e3_lr,
        "member_views": p.e3_member_views, "views": p.e3_views, "n_teachers": p.e3_teachers,
        "seeds": p.e3_seeds, "single": single, "members": member_scores, "ensemble": ensemble,
        "ensemble_gain": ensemble["test_acc"] - single["test_acc"]["mean"],
        "sweep": [{**c._asdict(), "dropout": d} for d, r in sweeps.items() for c in r.candidates],
        "temperature": kept.temperature, "alpha": kept.alpha, "student_dropout": dropout,
        "distilled": {"test_acc": acc, "test_errors": summary([r["test_errors"] for r in runs]),
                      "val_acc": summary([r["val_acc"] for r in runs])},
        "control": control_scores,
        # the same share measured from the control instead of the members' mean
        "control_gain_kept": None if control is None else share_of_gap(
            control_scores["test_acc"], ensemble["test_acc"], acc["mean"]),
        "control_curve": None if control is None else curve(control_folder(ctx, dropout)),
        "agreement_with_ensemble": float(
            (student_probs.argmax(1) == ens_test.argmax(1)).double().mean()),
        "headline_gain_kept": gain_kept,
        # members resampled too: the single-model level is their mean
        "kept_ci": gap_share_ci(ctx, members_ok, ens_ok, students_ok),
        "curves": member_curves, "student_curves": student_curves,
        "late_change": {"members": [late_change(c) for c in member_curves],
                        "students": [late_change(c) for c in student_curves]},
    }
    gk = gain_kept
    ctx.say(f"{EXP}: done; single {100 * single['test_acc']['mean']:.2f}%, ensemble "
            f"{100 * ensemble['test_acc']:.2f}% (gain {100 * out['ensemble_gain']:.2f} points), "
            f"distilled {100 * acc['mean']:.2f}%: "
            f"{'n/a' if gk is None else f'{100 * gk:.0f}%'} of the gain kept, 95% interval "
            f"{_pcts(out['kept_ci'])}"
            + ("" if control is None else
               f"; control (hard labels, {student_epochs(p)} epochs) "
               f"{100 * out['control']['test_acc']:.2f}%"))
    return out


def _students(ctx: Context, members: list[nn.Module], *, helper: bool = False
              ) -> tuple[dict[float, SweepResult], float, list[nn.Module], list[Path],
                         nn.Module | None]:
    """E3's students: a sweep of T (and alpha) per student dropout on seed ``e3_teachers`` (the
    best on validation kept), then the kept setting on the other seeds, then the control (when
    the students train longer than the members). ``helper``: train the candidates and the other
    seeds from the last one down (:func:`prefetch`), and the control before the other seeds when
    its dropout is known; with a single candidate there is nothing to choose, so the helper
    trains the control and the other seeds without waiting for the sweep.

    Returns (sweep per dropout, the kept dropout, the students by seed, their folders, the
    control or None)."""
    p, s = ctx.preset, ctx.splits
    # seeds of the students start past the members': no shared initial weights
    seed0 = p.e3_teachers
    epochs = student_epochs(p)
    views = presets.views(p.e3_member_views, p.e3_views)
    transfer = make_transfer_set(s)
    name = model_name(p)
    folder = students_folder(ctx)
    configs = [DistillConfig(temperature=float(t), alpha=float(a), views=views)
               for t in p.e3_temperatures for a in p.e3_alphas]
    # one sweep of T per student dropout (same seed, one teacher cache), the best on validation kept
    cache = folder / "sweep" / "cache"
    dropouts = student_dropouts(p)

    def label(d: float) -> str:
        return f"student {name} (dropout {d:g}) from {len(members)} members"

    seeds = range(1, p.e3_seeds)  # the students' other seeds, past the first

    def others(dropout: float, cfg: DistillConfig) -> dict[int, tuple[nn.Module, Path]]:
        by_seed = {}
        for i in reversed(seeds) if helper else seeds:
            f = folder / f"seed_{seed0 + i}{_suffix(ctx, dropout)}"
            by_seed[i] = (ctx.distilled_model(
                f, spec(ctx, dropout), seed0 + i, epochs, members, transfer, cfg, cache,
                lr=p.e3_lr, label=f"student {name} (dropout {dropout:g}), seed {seed0 + i}"), f)
        return by_seed

    def control(dropout: float) -> nn.Module | None:
        if not has_control(p):
            return None
        return ctx.hard_model(
            control_folder(ctx, dropout), spec(ctx, dropout), seed0, epochs,
            views=views, lr=p.e3_lr,
            label=f"control {name} (dropout {dropout:g}), seed {seed0}, the students' budget")

    if helper and len(configs) > 1:
        for d in reversed(dropouts):
            ctx.sweep_candidates(folder / f"sweep{_suffix(ctx, d)}", spec(ctx, d), seed0,
                                 epochs, members, transfer, configs[::-1], label=label(d),
                                 cache_dir=cache, lr=p.e3_lr)
    if helper and len(dropouts) == 1:  # the control's dropout is known before the choice
        # the control first: the main invocation ends with it, and starts the seeds after the
        # sweep, from the first one up
        control(dropouts[0])
        if len(configs) == 1:  # nothing to choose: the other seeds need not wait either
            others(dropouts[0], configs[0])
    # a helper waits here for the main invocation's sweeps, then loads them
    sweeps = {d: ctx.sweep(folder / f"sweep{_suffix(ctx, d)}", spec(ctx, d), seed0, epochs,
                           members, transfer, configs, cache_dir=cache, lr=p.e3_lr, label=label(d))
              for d in dropouts}
    dropout = max(sweeps, key=lambda d: sweeps[d].candidates[sweeps[d].best].val_acc)
    sw = sweeps[dropout]
    kept = sw.candidates[sw.best]
    cfg = DistillConfig(temperature=kept.temperature, alpha=kept.alpha, views=views)
    by_seed = others(dropout, cfg)
    students = [sw.model, *(by_seed[i][0] for i in seeds)]
    folders = [Path(kept.folder), *(by_seed[i][1] for i in seeds)]
    return sweeps, dropout, students, folders, control(dropout)


def _pcts(ci: list[float]) -> str:
    return "[" + ", ".join(f"{100 * v:.0f}%" for v in ci) + "]"
