"""E6: the specialists distilled back into one model (the paper's open problem, sec. 5).

Paper: none; Hinton, Vinyals & Dean leave open how to put what the specialists know back into one
model. Here, for each E5 generalist that has specialists (E5's generalists are the MLP members,
trained on hard labels): the exact combined distribution q of the generalist and its specialists
over the transfer set (the training set), or over V views of it (``e6_view_recipe``), is cached
and distilled into one model of the generalist's architecture, starting from the generalist's
weights (``specialists.distill_specialists``, T and alpha from the preset, the hard labels
weighted 1 - alpha). The control is the generalist trained
on for the same budget (epochs, lr, seed, batches, views) on hard labels alone, its own objective
(``MergeConfig(control="labels")``), so that extra training is not counted as the specialists' gain.

Headline: the share of the specialists' gain over the control that the merged model keeps,
(merged - control) / (combined - control), on test accuracy pooled over the generalists (their
correct counts summed), with a 95% paired-bootstrap interval over test examples (the same
examples drawn for every generalist and system). None when the specialists gain nothing over the
control (the result's ``note`` says so), or when no generalist has specialists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from ensemble_kd import make_transfer_set
from ensemble_kd.ensemble import data_meta
from ensemble_kd.metrics import paired_bootstrap_ci
from ensemble_kd.run import Run
from specialists import MergeConfig, distill_specialists, evaluate_merge, load_specialists
from specialists.merge import merge_folders
from specialists.merge_report import SYSTEMS, merge_probs

from .common import Context, curve, late_change, share_of_gap
from .members import PREFIX, mlp_members
from .presets import views

EXP = "E6"


def specialists_folder(ctx: Context, g: int) -> Path:
    """Where E5 trained generalist ``g``'s specialists (``train_specialists``' folder)."""
    return ctx.out / "e5" / f"generalist_{g}"


def merge_folder(ctx: Context, g: int) -> Path:
    """Generalist ``g``'s merge: ``q_cache/``, ``model/`` (merged) and ``control/``."""
    return ctx.out / "e6" / f"generalist_{g}"


def _e5_runs(ctx: Context) -> list[dict]:
    e5 = ctx.load_result("E5")
    if e5 is None:
        raise ValueError("E6 distils E5's specialists: run E5 first (e.g. --only E5,E6)")
    return e5["runs"]


def planned(ctx: Context) -> int:
    """The MLP members (loaded), then two models per generalist with specialists: the merged model
    and its control."""
    e5 = ctx.load_result("E5")
    merges = 0 if e5 is None else sum(1 for r in e5["runs"] if r["subsets"])
    return ctx.preset.members_count + 2 * merges


def run(ctx: Context) -> dict:
    p, s = ctx.preset, ctx.splits
    runs = _e5_runs(ctx)
    ctx.claim("e6", (PREFIX, "e5_", "e6_"))  # the generalists (MLP members) and E5's specialists
    ctx.begin(EXP, planned(ctx))
    teachers = mlp_members(ctx)
    transfer = make_transfer_set(s)
    config = MergeConfig(temperature=p.e6_temperature, alpha=p.e6_alpha, top_n=1,
                         control="labels", views=views(p.e6_view_recipe, p.e6_views, seed=0))
    entries, correct = [], []  # correct: per merged generalist, (4, N) bools in SYSTEMS order
    for e5_run in runs:
        g = e5_run["generalist"]
        entry: dict = {"generalist": g, "subsets": e5_run["subsets"],
                       "subset_names": e5_run["subset_names"]}
        if not e5_run["subsets"]:
            entry["note"] = e5_run.get("note") or "no specialists (E5)"
            ctx.say(f"{EXP} generalist {g + 1}: nothing to merge ({entry['note']})")
            entries.append(entry)
            continue
        entry.update(_merge_one(ctx, g, teachers[g], transfer, config, correct))
        entries.append(entry)
        ctx.save_run()
    return _result(ctx, entries, correct)


def _merge_one(ctx: Context, g: int, gen: nn.Module, transfer, config: MergeConfig,
               correct: list) -> dict:
    """Distil generalist ``g`` + its E5 specialists into one model (resumable) and score it."""
    p, s = ctx.preset, ctx.splits
    sps = load_specialists(specialists_folder(ctx, g), device=ctx.device)
    out_dir = merge_folder(ctx, g)
    folders = merge_folders(out_dir)
    label = f"generalist {g + 1} ({len(sps)} specialists)"
    tag = ctx._tag(2)
    if Run(folders["model"]).finished() and Run(folders["control"]).finished():
        ctx.say(f"{tag} {label}: merged model and control already trained, loading")
    res = distill_specialists(
        gen, sps, transfer, ctx.train_config(p.e6_epochs, g, lr=p.e6_lr), config, out_dir,
        val=(s.x_val, s.y_val), meta={**data_meta(s), "generalist": g}, device=ctx.device,
        progress=False, say=lambda m: ctx.say(f"{tag} {label}: {m}"))
    for key in ("model", "control"):  # saved: the checkpoints only served a resume
        Run(folders[key]).checkpoint_path.unlink(missing_ok=True)

    probs = merge_probs(gen, sps, res.merged, res.control, s.x_test, top_n=1,
                        device=ctx.device)  # {system: (N, C)}, the combination solved once
    rep = evaluate_merge(gen, sps, res.merged, res.control, s.x_test, s.y_test, top_n=1,
                         n_resamples=p.n_boot, device=ctx.device, probs=probs)
    ok = np.stack([(probs[k].argmax(1) == s.y_test).numpy() for k in SYSTEMS])  # (4, N)
    correct.append(ok)
    acc = {k: float(ok[i].mean()) for i, k in enumerate(SYSTEMS)}
    kept = share_of_gap(acc["control"], acc["combined"], acc["merged"])
    curves = {k: curve(folders[k]) for k in ("model", "control")}
    ctx.say(f"{EXP} {label}: test accuracy generalist {_pct(acc['generalist'])}, control "
            f"{_pct(acc['control'])}, with specialists {_pct(acc['combined'])}, merged "
            f"{_pct(acc['merged'])}: gain kept {_pct(kept, 0)}")
    return {
        "n_specialists": len(sps),
        **{f"{k}_acc": acc[k] for k in SYSTEMS},
        "gain_kept": kept, "gain_kept_ci": None if kept is None else _kept_ci(ok[1:], p.n_boot),
        "combined_gain": rep["combined_gain"], "merged_gain": rep["merged_gain"],
        "systems": rep["systems"], "inference_params": rep["inference_params"],
        "q_fingerprint": res.q_fingerprint,
        "curves": {"merged": curves["model"], "control": curves["control"]},
        "late_change": {"merged": late_change(curves["model"]),
                        "control": late_change(curves["control"])},
    }


def _result(ctx: Context, entries: list[dict], correct: list[np.ndarray]) -> dict:
    """The pooled headline and its interval, per-generalist rows, and why when there is none."""
    p = ctx.preset
    out = {"epochs": p.e6_epochs, "lr": p.e6_lr, "temperature": p.e6_temperature,
           "alpha": p.e6_alpha, "control": "labels", "top_n": 1, "generalists": entries,
           "generalist_views": p.members_views,  # the generalists' training inputs
           "view_recipe": p.e6_view_recipe,  # q's inputs, and the merged model's and control's
           "views": None if p.e6_view_recipe == "plain" else p.e6_views,
           "headline_gain_kept": None, "gain_kept_ci": None, "pooled": None, "note": None}
    if not correct:
        why = "; ".join(f"generalist {e['generalist']}: {e['note']}" for e in entries)
        out["note"] = f"no generalist has specialists, so there is nothing to merge ({why})"
        ctx.say(f"{EXP}: done; {out['note']}")
        return out
    ok = np.stack(correct, 1)  # (4, G, N): systems x generalists x test examples
    means = {k: float(ok[i].mean()) for i, k in enumerate(SYSTEMS)}
    gain = means["combined"] - means["control"]
    out["pooled"] = {**{f"{k}_acc": v for k, v in means.items()},
                     "combined_gain": gain, "merged_gain": means["merged"] - means["control"],
                     "n_generalists": int(ok.shape[1]), "n_test": int(ok.shape[2])}
    if not gain > 0:
        out["note"] = (f"the specialists gain nothing over the control (generalist + specialists "
                       f"{_pct(means['combined'])}, control {_pct(means['control'])} on test, "
                       f"pooled over {ok.shape[1]} generalist(s)), so there is no gain to keep")
        ctx.say(f"{EXP}: done; {out['note']}")
        return out
    ci = paired_bootstrap_ci(_kept, list(ok[1:]), n_boot=p.n_boot)
    out["headline_gain_kept"] = ci.estimate
    out["gain_kept_ci"] = _interval(ci)
    out["pooled"]["n_valid_resamples"] = int(ci.n_valid)
    ctx.say(f"{EXP}: done; the merged model keeps {_pct(ci.estimate, 0)} of the specialists' "
            f"gain over the control ({_pct(gain)} of test accuracy), 95% interval "
            f"[{_pct(ci.low, 0)}, {_pct(ci.high, 0)}]")
    return out


def _kept(control: np.ndarray, combined: np.ndarray, merged: np.ndarray) -> float | None:
    """Share of the gain kept, on correctness (G, N) pooled over generalists and examples."""
    return share_of_gap(control.mean(), combined.mean(), merged.mean())


def _kept_ci(ok: np.ndarray, n_boot: int) -> list[float]:
    """95% interval of :func:`_kept` for one generalist: ``ok`` (3, N) control, combined, merged."""
    return _interval(paired_bootstrap_ci(_kept, list(ok), n_boot=n_boot))


def _interval(ci) -> list[float] | None:
    """``[low, high]`` of a ``BootstrapCI``; None when no resample had a gain to keep."""
    return ci.as_list() if np.isfinite(ci.low) else None


def _pct(x: float | None, d: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{d}f}%"
