"""The reproduction report: Markdown, self-contained HTML (figures inlined), and results.json.

The report is a list of blocks (headings, paragraphs, lists, tables, images) rendered twice, so the
Markdown and the HTML always say the same. Experiments not finished yet are marked as pending;
the report is rewritten after every experiment, so a long run shows its numbers as they come.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ensemble_kd.io import atomic_write_json, atomic_write_text

from . import figures
from . import paper_numbers as paper

HEADLINES = {  # results.json key -> (experiment, key in its result, what it is)
    "e1_gap_closed": ("E1", "headline_gap_closed",
                      "E1 share of the teacher-student gap closed (larger student, T chosen on "
                      "validation)"),
    "e2_omitted_class_recall_after_bias": ("E2", "headline_recall_after_bias",
                                           "E2 test recall of the omitted (hardest) class after "
                                           "raising its bias"),
    "e3_ensemble_gain_kept": ("E3", "headline_gain_kept",
                              "E3 share of the ensemble's gain kept by the distilled model (best "
                              "combine mode on validation)"),
    "e4_gap_recovered": ("E4", "headline_gap_recovered",
                         "E4 share of the 3%-vs-100% gap recovered by soft targets"),
    "e5_relative_gain": ("E5", "headline_relative_gain",
                         "E5 relative gain in test accuracy from the specialists"),
}

METHOD_NOTES = [
    "Every model is an MLP trained by the project's one training loop (Adam, cosine schedule to "
    "0, batch 128); a distilled model and its hard-label baseline share architecture, initial "
    "weights, data order and number of epochs.",
    "Temperatures, the combine mode of E3 and the bias of E2 are chosen on the validation split "
    "(6,000 training images held out), never on the test set; the test set is used once, for the "
    "numbers reported.",
    "Spread is the sample standard deviation over seeds (students) or over the ensemble's members.",
    "E1's teacher is trained with dropout and random shifts of up to the given number of pixels; "
    "no max-norm weight constraint (the paper used one).",
    "The paper's E3-E5 used speech and JFT data; we compare the ratios, which carry across data "
    "sets. On a generalist that is ~89% right, a relative gain in accuracy is small by nature; the "
    "relative error reduction is reported beside it (PAPER_NUMBERS.md, 'Comparing fairly').",
]


# ------------------------------------------------------------------------ formatting


def pct(x, d: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{d}f}%"


def pm(s: dict | None, d: int = 2, scale: float = 100.0, unit: str = "%") -> str:
    """'mean ± sd' of a summary dict (no ± for a single value)."""
    if not s or s.get("mean") is None:
        return "n/a"
    m = scale * s["mean"]
    if s.get("n", 1) > 1:
        return f"{m:.{d}f} ± {scale * s['std']:.{d}f}{unit}"
    return f"{m:.{d}f}{unit}"


def errs(s: dict) -> str:
    return pm(s, d=0 if s.get("n", 1) == 1 else 1, scale=1.0, unit="")


def ratio(ours, theirs) -> str:
    if ours is None or not theirs:
        return "n/a"
    return f"{ours / theirs:.2f}"


# ------------------------------------------------------------------------ blocks


def _e1(r: dict) -> list:
    p = paper.E1
    t = r["teacher"]
    out = [("h2", "E1. Big teacher -> small student, temperature sweep"),
           ("p", f"Teacher: {_arch(t)}, dropout {t['dropout']:g}, "
                 f"random shifts up to {t['jitter']} px, {t['epochs']} epochs. Students: no "
                 f"regularisation, {r['student_epochs']} epochs, alpha = {r['alpha']:g} on the "
                 f"soft term, {r['seeds']} seed(s) each; transfer set = the training set. "
                 "Paper: MNIST, test errors out of 10,000.")]
    for k, st in enumerate(r["students"]):
        name = "x".join(map(str, st["widths"]))
        header = ["model", "paper: test errors", "ours: test errors", "ours: test accuracy",
                  "ours: gap closed", "paper: gap closed"]
        rows = [["teacher", str(p["teacher_errors"]),
                 str(t["test_errors"]), pct(t["test_acc"]), "", ""],
                [f"student {name}, hard labels", str(p["student_hard_errors"]) if k == 0 else "",
                 errs(st["hard"]["test_errors"]), pm(st["hard"]["test_acc"]), "", ""]]
        for d in st["distilled"]:
            is20 = k == 0 and d["temperature"] == p["temperature"]
            rows.append([f"student {name}, distilled T={d['temperature']:g}"
                         + (" (chosen on validation)" if d["temperature"] ==
                            st["best"]["temperature"] else ""),
                         str(p["student_distilled_errors"]) if is20 else "",
                         errs(d["test_errors"]), pm(d["test_acc"]), pct(d["gap_closed"], 0),
                         pct(p["gap_closed"], 0) if is20 else ""])
        out.append(("h3", f"Student {name}" + (" (the paper's 2x800 case)" if k == 0 else
                                                " (the paper's 30-unit case)")))
        out.append(("table", header, rows))
        b, bt = st["best"], st["best_on_test"]
        line = (f"Gap closed at the T chosen on validation (T = {b['temperature']:g}): "
                f"**{pct(b['gap_closed'], 1)}** (paper: {pct(p['gap_closed'], 0)} at T = 20; "
                f"ratio ours/paper {ratio(b['gap_closed'], p['gap_closed'])}). "
                f"Best T on the test set, for comparison with the paper's choice: "
                f"T = {bt['temperature']:g}, {pct(bt['gap_closed'], 1)}.")
        if b["gap_closed"] is None:
            line += (" n/a: the teacher is not more accurate than this student trained on hard "
                     "labels, so there is no gap to close.")
        if k > 0:
            line += (" Paper: with 30 units per layer, T in 2.5-4 did clearly better than "
                     "higher or lower T.")
        out.append(("p", line))
    return out


def _arch(t: dict) -> str:
    sizes = "-".join(map(str, t["widths"]))
    if t.get("arch", "mlp") == "convnet":
        return f"convnet with channels {sizes} (batch norm)"
    return f"MLP {sizes.replace('-', 'x')}"


def _e2(r: dict) -> list:
    p = paper.E2
    out = [("h2", "E2. A class left out of the transfer set"),
           ("p", f"E1's teacher; E1's larger student ({'x'.join(map(str, r['student_widths']))}) "
                 f"distilled at T = {r['temperature']:g} on the training set without one class, "
                 f"{r['seeds']} seed(s). The bias added to the omitted class's logit is the value "
                 "in a grid that maximises validation accuracy (the paper chose 3.5 on the test "
                 "set).")]
    for c in r["classes"]:
        n = c["before"]["class_n"]
        rows = [
            ["test errors, all classes, before the bias", str(p["errors_before"]),
             errs(c["before"]["errors"])],
            ["errors on the omitted class, before", f"{p['class_errors_before']} of "
             f"{p['class_n']:,}", f"{errs(c['before']['class_errors'])} of {n:,}"],
            ["bias added", f"{p['bias']} (test set)", pm(c["bias"], scale=1.0, unit="")
             + " (validation)"],
            ["test errors, all classes, after", str(p["errors_after"]), errs(c["after"]["errors"])],
            ["errors on the omitted class, after", f"{p['class_errors_after']} of "
             f"{p['class_n']:,}", f"{errs(c['after']['class_errors'])} of {n:,}"],
            ["recall of the omitted class, after", pct(p["recall_after"], 1),
             pm(c["after"]["recall"], 1)],
            ["reference: recall when the class is in the transfer set", "",
             pm(c["with_class"]["recall"], 1)],
            ["recall after the bias / recall with the class present", "",
             ratio(c["after"]["recall"]["mean"], c["with_class"]["recall"]["mean"])],
        ]
        out.append(("h3", f"Omitted: {c['name']} (the {c['role']} class for the teacher, "
                          f"validation recall {pct(c['teacher_val_recall'], 1)})"))
        out.append(("table", ["", "paper (MNIST, 3s omitted)", f"ours ({c['name']} omitted)"],
                    rows))
    return out


def _e3(r: dict) -> list:
    p = paper.E3
    a = p["anchor"]
    name = "x".join(map(str, r["widths"]))
    rows = [["single model (mean ± s.d. of the members)", pct(p["single_acc"], 1),
             pm(r["single"]["test_acc"]), errs(r["single"]["test_errors"])],
            [f"ensemble of {r['n_teachers']}", pct(p["ensemble_acc"], 1),
             pct(r["ensemble"]["test_acc"]), str(r["ensemble"]["test_errors"])]]
    for m in r["modes"]:
        rows.append([f"distilled single model ({m['mode']}, T={m['temperature']:g})"
                     + (" (chosen on validation)" if m["mode"] == r["best_mode"] else ""),
                     pct(p["distilled_acc"], 1) if m["mode"] == "sum" else "",
                     pm(m["test_acc"]), errs(m["test_errors"])])
    gain_rows = [[f"{m['mode']}", pct(m["gain_kept"], 0), pct(p["gain_kept"], 0),
                  ratio(m["gain_kept"], p["gain_kept"])] for m in r["modes"]]
    sweep = [[f"{s['temperature']:g}", pct(s["val_acc"]), pct(s["test_acc"])]
             for s in r["temperature_sweep"]]
    online = [m for m in r["modes"] if m.get("online_jitter")]
    variant = ("" if not online else
               f" Variant '{online[0]['mode']}': the transfer set is enlarged by random shifts of "
               f"the inputs, with the teachers run on each shifted batch; the single models were "
               f"trained without shifts (on hard labels, shifts did not help an MLP: see E1's "
               f"pilot note).")
    return [
        ("h2", "E3. Ensemble -> one model"),
        ("p", f"{r['n_teachers']} MLPs {name} (dropout {r['dropout']:g}, {r['epochs']} epochs) "
              f"differing by seed; the distilled model has the same architecture, recipe and "
              f"budget, hard-label weight {1 - r['alpha']:g}, {r['seeds']} seed(s) per combine "
              "mode. 'sum' adds one T^2 KL term per teacher (the paper's multi-task loss); "
              "'mean_logits' distils the softmax of the teachers' mean logits." + variant),
        ("table", ["system", "paper: test frame accuracy (speech)", "ours: test accuracy",
                   "ours: test errors"], rows),
        ("p", "Share of the ensemble's gain kept by the distilled model, (distilled - single) / "
              f"(ensemble - single); paper 86% (a later anchor, Allen-Zhu & Li 2023 on CIFAR-100: "
              f"{pct(a['gain_kept'], 0)}). Headline: the mode chosen on validation "
              f"({r['best_mode']}): **{pct(r['headline_gain_kept'], 0)}**."),
        ("table", ["combine mode", "ours: gain kept", "paper: gain kept", "ours / paper"],
         gain_rows),
        *([("p", "n/a: the ensemble is not more accurate than its members' mean, so there is no "
                 "gain to keep.")] if r["headline_gain_kept"] is None else []),
        ("p", "Choice of T (sum mode, first seed):"),
        ("table", ["T", "validation accuracy", "test accuracy"], sweep),
    ]


def _e4(r: dict) -> list:
    p = paper.E4
    best = next(s for s in r["soft"] if s["temperature"] == r["temperature"])
    size = r["subset_sizes"][0] if r["subset_sizes"] else 0
    rows = [["100% of the data, hard labels", pct(p["full_train_acc"], 1),
             pct(p["full_test_acc"], 1), pm(r["full_data"]["train_acc"]),
             pm(r["full_data"]["test_acc"])],
            ["3%, hard labels (early stopped)", pct(p["hard3_train_acc"], 1),
             pct(p["hard3_test_acc"], 1), pm(r["hard"]["train_acc"]), pm(r["hard"]["test_acc"])],
            [f"3%, soft targets (T={best['temperature']:g}, chosen on validation)",
             pct(p["soft3_train_acc"], 1), pct(p["soft3_test_acc"], 1), pm(best["train_acc"]),
             pm(best["test_acc"])]]
    per_t = [[f"{s['temperature']:g}", pm(s["val_acc"]), pm(s["test_acc"]),
              pct(s["gap_recovered"], 0)] for s in r["soft"]]
    return [
        ("h2", "E4. Soft targets as a regulariser (3% of the training data)"),
        ("p", f"E3's architecture and recipe on {int(round(100 * r['fraction']))}% of the "
              f"training set ({size:,} examples), {r['seeds']} different subsets. Hard labels: "
              f"up to {r['epochs']} epochs, early stopping on validation NLL (patience "
              f"{r['patience']}; kept epochs {r['hard']['best_epoch']}). Soft targets: E3's first "
              f"model as teacher, alpha = {r['alpha']:g}, all {r['epochs']} epochs, no early "
              "stopping. The 100% row is E3's single models. 'Train' = accuracy on the model's "
              "own training data."),
        ("table", ["system", "paper: train", "paper: test", "ours: train", "ours: test"], rows),
        ("p", f"Share of the gap recovered, (soft 3% - hard 3%) / (hard 100% - hard 3%): "
              f"**{pct(r['headline_gap_recovered'], 0)}** (paper {pct(p['gap_recovered'], 0)}; "
              f"ours / paper {ratio(r['headline_gap_recovered'], p['gap_recovered'])})."),
        ("table", ["T", "ours: validation", "ours: test", "gap recovered"], per_t),
    ]


def _e5(r: dict) -> list:
    p = paper.E5
    out = [("h2", "E5. Specialists"),
           ("p", f"Generalists: the first {len(r['runs'])} E3 model(s). Subsets: spectral "
                 "clustering of each generalist's validation confusion, clusters of one class "
                 f"dropped, {r['overlap']} most-confused outside class added to each; "
                 f"specialists start from the generalist, {r['epochs']} epoch(s) (one epoch = "
                 f"one pass over the subset's examples, half of each batch from the subset), "
                 f"lr {r['lr']:g}; combination by the exact KL minimiser, top-n = 1.")]
    sub_rows = []
    for run in r["runs"]:
        subs = "; ".join("{" + ", ".join(n) + "}" for n in run["subset_names"]) or "none"
        sub_rows.append([str(run["generalist"]), subs, pct(run.get("generalist_acc")),
                         pct(run.get("combined_acc")), pct(run.get("relative_gain")),
                         pct(run.get("relative_error_reduction"))])
    out.append(("table", ["generalist", "specialist subsets", "test acc", "with specialists",
                          "relative gain", "relative error reduction"], sub_rows))
    rows = [["generalist", pct(p["generalist_conditional_acc"], 1), pct(p["generalist_acc"], 1),
             pm(r["generalist_conditional_acc"]), pm(r["generalist_acc"])],
            ["+ specialists", pct(p["combined_conditional_acc"], 1), pct(p["combined_acc"], 1),
             pm(r["combined_conditional_acc"]), pm(r["combined_acc"])],
            ["relative gain in test accuracy", "", pct(p["relative_gain"], 1), "",
             pm(r["relative_gain"])],
            ["relative reduction of test error", "", pct(p["relative_error_reduction"], 1), "",
             pm(r["relative_error_reduction"])]]
    out.append(("table", ["system", "paper: conditional acc", "paper: test acc",
                          "ours: conditional acc", "ours: test acc"], rows))
    pc = {row[0]: row for row in p["by_coverage"]}
    cov = []
    for row in r["by_coverage"]:
        pr = pc.get(row["label"])
        cov.append([row["label"], f"{row['n']:,}", f"{row['change']:+,}" if row["change"] else "0",
                    pct(row["relative_change"], 1),
                    f"{pr[1]:,}" if pr else "", f"{pr[2]:+,}" if pr and pr[2] else
                    ("0" if pr else ""), pct(pr[3], 1) if pr else ""])
    out.append(("p", "Change in correct top-1 by the number of specialists covering the true "
                     "class (all generalists pooled):"))
    out.append(("table", ["# covering", "ours: test cases", "ours: change in correct",
                          "ours: relative", "paper: test cases", "paper: change",
                          "paper: relative"], cov))
    return out


SECTIONS = [("E1", _e1, ["e1_accuracy_vs_temperature.png"]), ("E2", _e2, ["e2_bias.png"]),
            ("E3", _e3, ["e3_ensemble.png"]), ("E4", _e4, ["e4_regulariser.png"]),
            ("E5", _e5, ["e5_coverage.png"])]
TITLES = {"E1": "E1. Big teacher -> small student", "E2": "E2. A class left out of the "
          "transfer set", "E3": "E3. Ensemble -> one model", "E4": "E4. Soft targets as a "
          "regulariser", "E5": "E5. Specialists"}


def headlines(results: dict) -> dict:
    """The headline keys of results.json (None for experiments not finished)."""
    out = {}
    for key, (exp, field, _) in HEADLINES.items():
        r = results.get(exp)
        out[key] = None if r is None else r.get(field)
    return out


def _summary_blocks(results: dict, heads: dict) -> list:
    rows = []
    for key, (exp, _, what) in HEADLINES.items():
        aim = paper.AIMS[key]
        ours = heads[key]
        if ours is None:
            verdict = "pending" if exp not in results else "n/a"
        elif key == "e5_relative_gain":
            verdict = "yes" if ours > 0 and _grows(results["E5"]) else (
                "positive, but not growing with coverage" if ours > 0 else "no")
        else:
            verdict = "yes" if ours >= aim else "no"
        shown = pct(ours, 1)
        if key == "e5_relative_gain" and ours is not None:
            shown = (f"{pct(ours, 2)} (error reduction "
                     f"{pct(results['E5']['relative_error_reduction']['mean'], 1)}; paper 1.5%)")
        if key == "e2_omitted_class_recall_after_bias" and ours is not None:
            shown += (f" ({ratio(results['E2'].get('recall_after_bias_vs_present'), 1.0)} of its "
                      "recall when the class is in the transfer set)")
        rows.append([what, "> 0, growing with coverage" if key == "e5_relative_gain"
                     else pct(aim, 1), shown, "" if key == "e5_relative_gain"
                     else ratio(ours, aim), verdict])
    return [("table", ["headline", "paper", "ours", "ours / paper", "at or above the paper?"],
             rows)]


def _grows(e5: dict) -> bool:
    """Whether the relative gain grows with the number of covering specialists (rows 1 and up)."""
    rel = [r["relative_change"] for r in e5["by_coverage"] if r["covering"] >= 1
           and r["relative_change"] is not None]
    return len(rel) >= 2 and all(b >= a for a, b in zip(rel, rel[1:], strict=False))


def _shortfalls(results: dict, heads: dict) -> list[str]:
    """One sentence per headline below the paper's ratio."""
    out = []
    for key, (exp, _, what) in HEADLINES.items():
        ours, aim = heads[key], paper.AIMS[key]
        if ours is None or exp not in results:
            continue
        if key == "e5_relative_gain":
            if ours <= 0:
                out.append(f"{what}: {pct(ours, 2)}, not a gain.")
            elif not _grows(results["E5"]):
                out.append(f"{what}: positive ({pct(ours, 2)}), but the gain does not grow "
                           "steadily with the number of covering specialists.")
        elif ours < aim:
            out.append(f"{what}: {pct(ours, 1)} against the paper's {pct(aim, 1)}.")
    return out


def build_blocks(results: dict, meta: dict, figs: dict) -> list:
    heads = headlines(results)
    done = [e for e, _, _ in SECTIONS if e in results]
    status = ("complete" if len(done) == len(SECTIONS) else
              f"PARTIAL: {', '.join(done) or 'no experiment'} finished, the rest pending")
    blocks = [
        ("h1", f"Reproducing Hinton, Vinyals & Dean (2015) on {meta['dataset']}"),
        ("list", [f"Status: {status}",
                  f"Preset: {meta['preset']}" + (" (quick: small budgets; numbers show the "
                                                   "pipeline, not the paper's effects)"
                                                   if meta["quick"] else ""),
                  f"Command: `{meta['command']}`"
                  + ("" if len(meta.get("commands", [])) < 2 else " (the work was done by: "
                     + "; ".join(f"`{c}`" for c in meta["commands"]) + ")"),
                  f"Date: {meta['date']}",
                  f"Machine: {meta['machine']}",
                  f"Wall time: {meta['wall_seconds'] / 3600:.2f} h over "
                  f"{meta['invocations']} invocation(s)",
                  f"Data: {meta['data']}"]),
        ("h2", "Summary"),
        *_summary_blocks(results, heads),
    ]
    short = _shortfalls(results, heads)
    if short:
        blocks += [("p", "Where we fall short of the paper:"), ("list", short)]
    for exp, fn, _ in SECTIONS:
        r = results.get(exp)
        if r is None:
            blocks += [("h2", TITLES[exp]), ("p", "Not run yet (pending).")]
            continue
        blocks += fn(r)
        for f in figs.get(exp, []):
            blocks.append(("img", f, f"{exp}: {f}"))
    if "curves" in figs:
        blocks += [("h2", "Convergence"), ("img", figs["curves"], "validation accuracy per epoch")]
    blocks += [("h2", "Method notes"), ("list", METHOD_NOTES + list(meta.get("notes", [])))]
    return blocks


# ------------------------------------------------------------------------ rendering


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(blocks: list) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + b[1])
        elif kind == "p":
            out.append(b[1])
        elif kind == "list":
            out.append("\n".join(f"* {item}" for item in b[1]))
        elif kind == "table":
            out.append(_md_table(b[1], b[2]))
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """HTML of a line with Markdown's **bold** and `code` (the only inline marks used)."""
    parts = html.escape(text).split("**")
    text = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def to_html(blocks: list, folder: Path) -> str:
    body = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{html.escape(b[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline(b[1])}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>"
                           for row in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode((folder / b[1]).read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(b[2])}" src="data:image/png;base64,'
                        f'{data}"><figcaption>{html.escape(b[2])}</figcaption></figure>')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
             "line-height:1.45}table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid "
             "#ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}img{max-width:100%}"
             "code{background:#f3f3f3;padding:0 3px}figcaption{color:#666;font-size:90%}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Reproducing Hinton et "
            f"al. (2015)</title><style>{style}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(folder: str | Path, results: dict, meta: dict,
                 fresh: set[str] | None = None) -> dict:
    """Write figures, report.md, report.html and results.json to ``folder``; return the JSON.

    ``fresh``: the experiments whose figures must be redrawn (None: all); the figures of the
    others are reused when their files exist (drawing them all takes seconds).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    makers = {"E1": (figures.e1_temperature, "e1_accuracy_vs_temperature.png"),
              "E2": (figures.e2_bias, "e2_bias.png"),
              "E3": (figures.e3_ensemble, "e3_ensemble.png"),
              "E4": (figures.e4_regulariser, "e4_regulariser.png"),
              "E5": (figures.e5_coverage, "e5_coverage.png")}

    def stale(exps, name) -> bool:
        return fresh is None or bool(set(exps) & fresh) or not (folder / name).exists()

    figs: dict = {}
    for exp, (make, name) in makers.items():
        if exp in results:
            if stale([exp], name):
                name = make(results[exp], folder)
            figs[exp] = [name] if name else []
    if "E1" in results or "E3" in results:
        name = "training_curves.png"
        if stale(["E1", "E3"], name):
            name = figures.training_curves(results.get("E1"), results.get("E3"), folder)
        figs["curves"] = name
    blocks = build_blocks(results, meta, figs)
    atomic_write_text(folder / "report.md", to_markdown(blocks))
    atomic_write_text(folder / "report.html", to_html(blocks, folder))
    data = {**headlines(results), "quick": meta["quick"], "wall_seconds": meta["wall_seconds"],
            "complete": all(e in results for e, _, _ in SECTIONS), "meta": meta,
            "paper": {"E1": paper.E1, "E2": paper.E2, "E3": paper.E3, "E4": paper.E4,
                      "E5": paper.E5, "aims": paper.AIMS},
            "experiments": results}
    atomic_write_json(folder / "results.json", data)
    return data
