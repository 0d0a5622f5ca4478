"""E3: an ensemble of models differing by seed, distilled into one model of the same size.

Paper (sec. 4, speech): single model 58.9% frame accuracy, ensemble of 10 61.1%, distilled single
model 60.8%: 86% of the ensemble's gain kept (hard-label weight 0.5, T in {1, 2, 5, 10}). Here: 10
MLPs trained with one recipe and different seeds; each of them *is* a single model trained on hard
labels, so the baseline is their mean (and spread). The distilled model has the same architecture,
recipe and budget. T is chosen on validation data (one seed, ``sum`` mode); both combine modes
(sum of per-teacher KL terms, KL to the mean of the logits) are then run with several seeds, and
optionally a variant whose transfer set is enlarged by shifting the inputs (teachers run online).
The headline is the variant with the best validation accuracy.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ensemble_kd import DistillConfig, ModelSpec, ensemble_probs, make_transfer_set

from .common import Context, metrics_history, scores, share_of_gap, summary, widths_name

EXP = "E3"


def teachers_folder(ctx: Context) -> Path:
    return ctx.out / "e3" / "teachers"


def spec(ctx: Context) -> ModelSpec:
    p = ctx.preset
    return ModelSpec("mlp", p.e3_widths, p.e3_dropout)


def e3_teachers(ctx: Context) -> list[nn.Module]:
    """The ensemble's members (shared with E4, whose teacher and baseline they are, and E5,
    whose generalists they are)."""
    ctx.claim("e3", ("e3_",))
    p = ctx.preset
    return ctx.ensemble(teachers_folder(ctx), spec(ctx), p.e3_teachers, p.e3_epochs,
                        label=f"model {widths_name(p.e3_widths)}")


def planned(ctx: Context) -> int:
    p = ctx.preset
    variants = len(p.e3_modes) + (1 if p.e3_online_jitter else 0)
    return p.e3_teachers + len(p.e3_temperatures) + variants * p.e3_seeds


def _student(ctx: Context, teachers, mode: str, t: float, seed: int,
             jitter: int = 0) -> nn.Module:
    """A distilled model; ``jitter`` > 0: the teachers run online on shifted inputs."""
    p = ctx.preset
    name = f"distilled_{mode}" + (f"_online_jitter{jitter}" if jitter else "")
    folder = ctx.out / "e3" / name / f"T{t:g}" / f"seed_{seed}"
    how = f"{mode}, online, jitter {jitter} px" if jitter else mode
    return ctx.distilled_model(
        folder, spec(ctx), seed, p.e3_epochs, teachers, make_transfer_set(ctx.splits),
        DistillConfig(temperature=float(t), alpha=p.e3_alpha, combine=mode,
                      online=bool(jitter), jitter=jitter),
        ctx.out / "e3" / "cache",
        label=f"model {widths_name(p.e3_widths)} distilled from {len(teachers)} ({how}) "
              f"T={t:g} seed {seed}",
    )


def run(ctx: Context) -> dict:
    p, s = ctx.preset, ctx.splits
    ctx.claim("e3", ("e3_",))
    ctx.begin(EXP, planned(ctx))
    teachers = e3_teachers(ctx)
    # seeds of the distilled models start past the teachers' seeds: no shared initial weights
    seed0 = p.e3_teachers
    members = [scores(m, ctx) for m in teachers]
    ens_test = ensemble_probs(teachers, s.x_test, device=ctx.device)  # (N, C)
    ens_val = ensemble_probs(teachers, s.x_val, device=ctx.device)
    ensemble = {
        "test_acc": float((ens_test.argmax(1) == s.y_test).double().mean()),
        "test_errors": int((ens_test.argmax(1) != s.y_test).sum()),
        "val_acc": float((ens_val.argmax(1) == s.y_val).double().mean()),
    }
    single = {k: summary([m[k] for m in members]) for k in ("test_acc", "test_errors", "val_acc")}

    sweep = []
    for t in p.e3_temperatures:
        r = scores(_student(ctx, teachers, "sum", t, seed0), ctx)
        sweep.append({"temperature": float(t), "val_acc": r["val_acc"], "test_acc": r["test_acc"]})
    best_t = max(sweep, key=lambda r: (r["val_acc"], -r["temperature"]))["temperature"]

    modes = []
    variants = [(m, 0) for m in p.e3_modes]
    if p.e3_online_jitter:
        variants.append(("sum", p.e3_online_jitter))
    for mode, jitter in variants:
        runs = [scores(_student(ctx, teachers, mode, best_t, seed0 + i, jitter), ctx)
                for i in range(p.e3_seeds)]
        acc = summary([r["test_acc"] for r in runs])
        modes.append({
            "mode": f"{mode}, online, jitter {jitter} px" if jitter else mode,
            "combine": mode, "online_jitter": jitter, "temperature": best_t, "test_acc": acc,
            "test_errors": summary([r["test_errors"] for r in runs]),
            "val_acc": summary([r["val_acc"] for r in runs]),
            "gain_kept": share_of_gap(single["test_acc"]["mean"], ensemble["test_acc"],
                                      acc["mean"]),
        })
    best = max(modes, key=lambda r: r["val_acc"]["mean"])
    out = {
        "widths": list(p.e3_widths), "dropout": p.e3_dropout, "epochs": p.e3_epochs,
        "n_teachers": p.e3_teachers, "alpha": p.e3_alpha, "seeds": p.e3_seeds,
        "single": single, "members": members, "ensemble": ensemble,
        "temperature_sweep": sweep, "temperature": best_t, "modes": modes,
        "best_mode": best["mode"], "headline_gain_kept": best["gain_kept"],
        "curves": [[r.get("val_acc") for r in metrics_history(teachers_folder(ctx) /
                                                              f"teacher_{k}")]
                   for k in range(p.e3_teachers)],
    }
    gk = best["gain_kept"]
    ctx.say(f"{EXP}: done; single {100 * single['test_acc']['mean']:.2f}%, ensemble "
            f"{100 * ensemble['test_acc']:.2f}%, distilled ({best['mode']}) "
            f"{100 * best['test_acc']['mean']:.2f}%: "
            f"{'n/a' if gk is None else f'{100 * gk:.0f}%'} of the gain kept")
    return out
