"""Figures of the reproduction report, one function per figure, each saved atomically as PNG.

Every function takes an experiment's ``result.json`` dict and returns the file name it wrote in
``folder`` (or None when the result lacks what the figure needs).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on the machines that run this
import matplotlib.pyplot as plt  # noqa: E402

from ensemble_kd.io import atomic_path  # noqa: E402

from . import paper_numbers as paper  # noqa: E402

DPI = 110


def _save(fig, folder: Path, name: str) -> str:
    with atomic_path(Path(folder) / name) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return name


def _pct(values):
    return [None if v is None else 100 * v for v in values]


def e1_temperature(e1: dict, folder: Path) -> str:
    """Per row: validation accuracy of every candidate (seed 0) against T, one line per recipe,
    with the teacher and the hard-label student."""
    rows = e1["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(5.2 * len(rows), 3.8), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        for recipe, cands in row["sweeps"].items():
            for a in sorted({c["alpha"] for c in cands}):
                pts = sorted((c["temperature"], 100 * c["val_acc"]) for c in cands
                             if c["alpha"] == a)
                ax.plot([t for t, _ in pts], [v for _, v in pts], marker="o",
                        label=f"{recipe} (alpha {a:g})")
        h = 100 * e1["hard"]["val_acc"]["mean"]
        ax.axhline(h, color="tab:red", ls="--", label="student, hard labels")
        ax.axhline(100 * row["teacher"]["val_acc"], color="black", ls=":", label="teacher")
        ts = sorted({c["temperature"] for cands in row["sweeps"].values() for c in cands})
        ax.set_xscale("log")
        ax.set_xticks(ts, [f"{t:g}" for t in ts])
        ax.minorticks_off()
        ax.set_xlabel("temperature T")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(f"row {row['name']}: chosen {row['chosen']['recipe']}, "
                     f"T={row['chosen']['temperature']:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("E1: candidates on validation (seed 0)")
    return _save(fig, folder, "e1_accuracy_vs_temperature.png")


def training_curves(e1: dict | None, e3: dict | None, e4: dict | None,
                    folder: Path) -> str | None:
    """Validation accuracy per epoch of every group of models (convergence check)."""
    panels = []
    if e1 is not None:
        curves = [("student, hard labels", c) for c in e1["hard"]["curves"]]
        for row in e1["rows"]:
            curves.append((f"{row['name']} teacher", row["teacher"]["curve"]))
            for rec in row["recipes"].values():
                curves += [(f"{row['name']} {rec['recipe']}", c) for c in rec["curves"]]
        panels.append(("E1", curves))
    if e3 is not None:
        panels.append(("E3", [("members", c) for c in e3["curves"]]
                       + [("students", c) for c in e3["student_curves"]]
                       + [("control (hard labels)", c) for c in [e3.get("control_curve")] if c]))
    if e4 is not None:
        panels.append(("E4 (3%)", [(key, c) for key, row in e4["rows"].items()
                                   for c in row["curves"]]))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, (name, curves) in zip(axes[0], panels, strict=True):
        colors: dict[str, str] = {}
        for label, c in curves:
            if not c:
                continue
            new = label not in colors
            color = colors.setdefault(label, f"C{len(colors) % 10}")
            ax.plot(range(1, len(c) + 1), _pct(c), color=color, alpha=0.7,
                    label=label if new else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Convergence: validation accuracy per epoch")
    return _save(fig, folder, "training_curves.png")


def e2_bias(e2: dict, folder: Path) -> str:
    """Validation accuracy and the omitted class's recall against the added bias."""
    classes = e2["classes"]
    fig, axes = plt.subplots(1, len(classes), figsize=(5.2 * len(classes), 3.6), squeeze=False)
    for ax, c in zip(axes[0], classes, strict=True):
        for i, run in enumerate(c["runs"]):
            b = [p["bias"] for p in run["val_curve"]]
            ax.plot(b, _pct([p["acc"] for p in run["val_curve"]]), color="tab:blue",
                    label="all classes (validation accuracy)" if i == 0 else None)
            ax.plot(b, _pct([p["recall"] for p in run["val_curve"]]), color="tab:orange",
                    label=f"{c['name']} (validation recall)" if i == 0 else None)
            ax.axvline(run["bias"], color="tab:green", alpha=0.5,
                       label="chosen bias" if i == 0 else None)
        ax.set_xlabel(f"bias added to the logit of {c['name']!r}")
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.set_title(f"omitted: {c['name']} ({c['role']} class for the teacher)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("E2: choosing the omitted class's bias on validation data")
    return _save(fig, folder, "e2_bias.png")


def e3_ensemble(e3: dict, folder: Path) -> str:
    """Members, the distilled students (each seed a dot) and the ensemble; the choice of T."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10.5, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    control = e3.get("control")  # students longer than the members: hard labels as long
    labels = ["members", "distilled students", "ensemble", *(["control"] if control else [])]
    ax.scatter([0] * len(e3["single"]["test_acc"]["values"]),
               _pct(e3["single"]["test_acc"]["values"]), color="tab:gray", alpha=0.7)
    ax.scatter([1] * len(e3["distilled"]["test_acc"]["values"]),
               _pct(e3["distilled"]["test_acc"]["values"]), color="tab:blue")
    ax.scatter([2], [100 * e3["ensemble"]["test_acc"]], color="tab:red", marker="*", s=160)
    if control:
        ax.scatter([3], [100 * control["test_acc"]], color="tab:green", marker="s")
    ax.axhline(100 * e3["single"]["test_acc"]["mean"], color="tab:gray", ls="--", lw=1)
    ax.axhline(100 * e3["ensemble"]["test_acc"], color="tab:red", ls="--", lw=1)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{e3['n_teachers']} members, ensemble, distilled (T={e3['temperature']:g})")
    ax.grid(alpha=0.3, axis="y")
    # one line per student dropout (each a sweep of T); older results have no dropout per candidate
    dropouts = list(dict.fromkeys(c.get("dropout", e3["dropout"]) for c in e3["sweep"]))
    for d in dropouts:
        sw = sorted((c for c in e3["sweep"] if c.get("dropout", e3["dropout"]) == d),
                    key=lambda c: c["temperature"])
        ax2.plot([c["temperature"] for c in sw], _pct([c["val_acc"] for c in sw]), marker="o",
                 label=f"dropout {d:g}")
    temps = sorted({c["temperature"] for c in e3["sweep"]})
    ax2.set_xscale("log")
    ax2.set_xticks(temps, [f"{t:g}" for t in temps])
    ax2.minorticks_off()
    ax2.set_xlabel("temperature T (seed 0)")
    ax2.set_ylabel("validation accuracy (%)")
    ax2.set_title("choice of T and the students' dropout")
    if len(dropouts) > 1:
        ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle("E3: ensemble -> one model")
    return _save(fig, folder, "e3_ensemble.png")


def e4_regulariser(e4: dict, folder: Path) -> str:
    """Train and test accuracy of every row (mean ± s.d. over subsets), and the paper's."""
    rr = e4["rows"]
    rows = [("100%\nhard", e4["full_data"]), ("3% hard", rr["hard"]),
            ("3% hard\nviews", rr["hard_views"]), ("3% soft\npaper", rr["paper"]),
            ("3% soft\nviews", rr["views"])]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11.5, 3.8), gridspec_kw={"width_ratios": [5, 3]})
    x = range(len(rows))
    for off, key, color in ((-0.2, "train_acc", "tab:gray"), (0.2, "test_acc", "tab:blue")):
        ax.bar([i + off for i in x], [100 * r[key]["mean"] for _, r in rows], width=0.38,
               yerr=[100 * r[key]["std"] for _, r in rows], capsize=3, color=color,
               label="train (own training data)" if key == "train_acc" else "test")
    ax.set_xticks(list(x), [n for n, _ in rows])
    lo = min(100 * r["test_acc"]["mean"] for _, r in rows)
    ax.set_ylim(max(0, lo - 10), 100)
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"ours (recipe {e4['recipe']}, baseline {e4['baseline']})")
    pn = paper.E4
    pvals = [(pn["full_train_acc"], pn["full_test_acc"]), (pn["hard3_train_acc"],
             pn["hard3_test_acc"]), (pn["soft3_train_acc"], pn["soft3_test_acc"])]
    px = range(len(pvals))
    for off, j, color in ((-0.2, 0, "tab:gray"), (0.2, 1, "tab:blue")):
        ax2.bar([i + off for i in px], [100 * v[j] for v in pvals], width=0.38, color=color)
    ax2.set_xticks(list(px), ["100% hard", "3% hard", "3% soft"])
    ax2.set_ylim(35, 75)
    ax2.set_ylabel("frame accuracy (%)")
    ax2.grid(alpha=0.3, axis="y")
    ax2.set_title("paper (speech)")
    fig.suptitle("E4: soft targets as a regulariser")
    return _save(fig, folder, "e4_regulariser.png")


def e5_coverage(e5: dict, folder: Path) -> str | None:
    """Relative change in correct top-1 by the number of specialists covering the true class."""
    rows = [r for r in e5["by_coverage"] if r["relative_change"] is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    ax.bar([r["covering"] - 0.2 for r in rows], [100 * r["relative_change"] for r in rows],
           width=0.4, label="ours (all generalists pooled)", color="tab:blue")
    pr = paper.E5["by_coverage"][: max(r["covering"] for r in rows) + 1]
    ax.bar([i + 0.2 for i in range(len(pr))], [100 * r[3] for r in pr], width=0.4,
           label="paper (JFT)", color="tab:gray")
    ax.set_xticks(range(len(pr)), [r[0] for r in pr])
    ax.set_xlabel("specialists covering the true class")
    ax.set_ylabel("relative change in correct (%)")
    ax.axhline(0, color="black", lw=0.8)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    ax.set_title("E5: gain by coverage")
    return _save(fig, folder, "e5_coverage.png")
