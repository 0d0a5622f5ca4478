"""E4: soft targets as a regulariser -- a model trained on 3% of the data.

Paper (sec. 4.1, speech): all data, hard labels: 58.9% test; 3% hard labels (early stopped): 44.5%;
3% soft targets: 57.0%, i.e. 87% of the gap recovered. Here: the E3 recipe and architecture; the
100% baseline is the E3 models (each trained on all the data), the teacher giving the soft targets
is E3's first model; several 3% subsets (seeds); T chosen on validation data. "Train accuracy" is
each model's accuracy on its own training data (all of it, or its 3%).
"""

from __future__ import annotations

from ensemble_kd import DistillConfig, make_transfer_set

from .common import Context, metrics_history, scores, share_of_gap, summary, widths_name
from .e3_ensemble import e3_teachers, spec

EXP = "E4"


def planned(ctx: Context) -> int:
    p = ctx.preset
    return p.e3_teachers + p.e4_seeds * (1 + len(p.e4_temperatures))


def run(ctx: Context) -> dict:
    p, s = ctx.preset, ctx.splits
    ctx.claim("e4", ("e3_", "e4_"))
    ctx.begin(EXP, planned(ctx))
    teachers = e3_teachers(ctx)
    teacher = teachers[0]
    full = [scores(m, ctx, train_x=s.x_train, train_y=s.y_train) for m in teachers]
    base = {k: summary([r[k] for r in full]) for k in ("test_acc", "train_acc", "val_acc")}
    name = widths_name(p.e3_widths)

    hard, soft = [], {t: [] for t in p.e4_temperatures}
    sizes = []
    for seed in range(p.e4_seeds):
        ts = make_transfer_set(s, fraction=p.e4_fraction, seed=seed)
        sizes.append(len(ts))
        folder = ctx.out / "e4" / f"subset_{seed}"
        m = ctx.hard_model(folder / "hard", spec(ctx), seed, p.e4_epochs, x=ts.x, y=ts.y,
                           early_stopping=p.e4_patience,
                           label=f"model {name} on {len(ts)} examples, hard labels, seed {seed}")
        hard.append(scores(m, ctx, train_x=ts.x, train_y=ts.y))
        hist = metrics_history(folder / "hard")
        if hist:  # the epoch whose weights early stopping kept (lowest validation NLL)
            hard[-1]["best_epoch"] = 1 + min(range(len(hist)), key=lambda i: hist[i]["val_nll"])
            hard[-1]["epochs_run"] = len(hist)
        for t in p.e4_temperatures:
            m = ctx.distilled_model(
                folder / f"soft_T{t:g}", spec(ctx), seed, p.e4_epochs, [teacher], ts,
                DistillConfig(temperature=float(t), alpha=p.e4_alpha), folder / "cache",
                label=f"model {name} on {len(ts)} examples, soft targets, seed {seed}",
            )
            soft[t].append(scores(m, ctx, train_x=ts.x, train_y=ts.y))

    def agg(runs: list[dict]) -> dict:
        return {k: summary([r[k] for r in runs]) for k in ("test_acc", "train_acc", "val_acc")}

    rows = [{"temperature": float(t), **agg(runs)} for t, runs in soft.items()]
    best = max(rows, key=lambda r: (r["val_acc"]["mean"], -r["temperature"]))
    hard_agg = agg(hard)
    best["gap_recovered"] = share_of_gap(hard_agg["test_acc"]["mean"], base["test_acc"]["mean"],
                                         best["test_acc"]["mean"])
    for r in rows:
        r["gap_recovered"] = share_of_gap(hard_agg["test_acc"]["mean"],
                                          base["test_acc"]["mean"], r["test_acc"]["mean"])
    out = {
        "fraction": p.e4_fraction, "subset_sizes": sizes, "epochs": p.e4_epochs,
        "patience": p.e4_patience, "alpha": p.e4_alpha, "seeds": p.e4_seeds,
        "full_data": base, "hard": {**hard_agg,
                                    "best_epoch": [r.get("best_epoch") for r in hard],
                                    "epochs_run": [r.get("epochs_run") for r in hard]},
        "soft": rows, "temperature": best["temperature"],
        "headline_gap_recovered": best["gap_recovered"],
    }
    g = best["gap_recovered"]
    ctx.say(f"{EXP}: done; 100% hard {100 * base['test_acc']['mean']:.2f}%, 3% hard "
            f"{100 * hard_agg['test_acc']['mean']:.2f}%, 3% soft (T={best['temperature']:g}) "
            f"{100 * best['test_acc']['mean']:.2f}%: "
            f"{'n/a' if g is None else f'{100 * g:.0f}%'} of the gap recovered")
    return out

