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
    """Test accuracy against T for each student size, with the hard-label baseline and teacher."""
    students = e1["students"]
    fig, axes = plt.subplots(1, len(students), figsize=(5.2 * len(students), 3.8), squeeze=False)
    teacher = 100 * e1["teacher"]["test_acc"]
    for ax, st in zip(axes[0], students, strict=True):
        ts = [r["temperature"] for r in st["distilled"]]
        mean = [100 * r["test_acc"]["mean"] for r in st["distilled"]]
        std = [100 * r["test_acc"]["std"] for r in st["distilled"]]
        ax.errorbar(ts, mean, yerr=std, marker="o", capsize=3, label="distilled (mean ± s.d.)")
        h, hs = 100 * st["hard"]["test_acc"]["mean"], 100 * st["hard"]["test_acc"]["std"]
        ax.axhline(h, color="tab:red", ls="--", label="same student, hard labels")
        if hs > 0:
            ax.axhspan(h - hs, h + hs, color="tab:red", alpha=0.12)
        ax.axhline(teacher, color="black", ls=":", label="teacher")
        best = st["best"]["temperature"]
        ax.axvline(best, color="tab:green", alpha=0.4, lw=6,
                   label=f"T chosen on validation ({best:g})")
        ax.set_xscale("log")
        ax.set_xticks(ts, [f"{t:g}" for t in ts])
        ax.minorticks_off()
        ax.set_xlabel("temperature T")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"student {'x'.join(map(str, st['widths']))} ({e1['seeds']} seed(s))")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4,
               bbox_to_anchor=(0.5, -0.13))  # below the panels: it hid points inside them
    fig.suptitle("E1: accuracy of distilled students against the temperature")
    return _save(fig, folder, "e1_accuracy_vs_temperature.png")


def training_curves(e1: dict | None, e3: dict | None, folder: Path) -> str | None:
    """Validation accuracy per epoch of the models trained on hard labels (convergence check)."""
    panels = []
    if e1 is not None:
        panels.append(("E1", e1))
    if e3 is not None:
        panels.append(("E3", e3))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, r) in zip(axes[0], panels, strict=True):
        if name == "E1":
            c = r["teacher"]["curve"]
            ax.plot(range(1, len(c) + 1), _pct(c), color="black", label="teacher")
            for st, color in zip(r["students"], ("tab:blue", "tab:orange", "tab:green"),
                                 strict=False):
                for i, c in enumerate(st["hard_curves"]):
                    ax.plot(range(1, len(c) + 1), _pct(c), color=color, alpha=0.7,
                            label=f"student {'x'.join(map(str, st['widths']))}, hard labels"
                            if i == 0 else None)
        else:
            for i, c in enumerate(r["curves"]):
                ax.plot(range(1, len(c) + 1), _pct(c), color="tab:purple", alpha=0.5,
                        label=f"{r['n_teachers']} ensemble members" if i == 0 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(f"{name}: models trained on hard labels")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
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
    """Single models, their ensemble and the distilled models (each seed a dot)."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10.5, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    labels = (["single models"]
              + ["distilled\n" + m["mode"].replace(", ", "\n") for m in e3["modes"]]
              + ["ensemble"])
    ax.scatter([0] * len(e3["single"]["test_acc"]["values"]),
               _pct(e3["single"]["test_acc"]["values"]), color="tab:gray", alpha=0.7)
    for i, m in enumerate(e3["modes"], start=1):
        ax.scatter([i] * len(m["test_acc"]["values"]), _pct(m["test_acc"]["values"]),
                   color="tab:blue")
    ax.scatter([len(labels) - 1], [100 * e3["ensemble"]["test_acc"]], color="tab:red", marker="*",
               s=160)
    ax.axhline(100 * e3["single"]["test_acc"]["mean"], color="tab:gray", ls="--", lw=1)
    ax.axhline(100 * e3["ensemble"]["test_acc"], color="tab:red", ls="--", lw=1)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{e3['n_teachers']} models, their ensemble, distilled (T={e3['temperature']:g})")
    ax.grid(alpha=0.3, axis="y")
    sw = e3["temperature_sweep"]
    ax2.plot([r["temperature"] for r in sw], _pct([r["val_acc"] for r in sw]), marker="o")
    ax2.set_xscale("log")
    ax2.set_xticks([r["temperature"] for r in sw], [f"{r['temperature']:g}" for r in sw])
    ax2.minorticks_off()
    ax2.set_xlabel("temperature T (sum mode, one seed)")
    ax2.set_ylabel("validation accuracy (%)")
    ax2.set_title("choice of T")
    ax2.grid(alpha=0.3)
    fig.suptitle("E3: ensemble -> one model")
    return _save(fig, folder, "e3_ensemble.png")


def e4_regulariser(e4: dict, folder: Path) -> str:
    """Train and test accuracy: all data (hard), 3% hard (early stopped), 3% soft targets."""
    soft = next(r for r in e4["soft"] if r["temperature"] == e4["temperature"])
    rows = [("100% hard", e4["full_data"]), ("3% hard\n(early stopped)", e4["hard"]),
            (f"3% soft\n(T={e4['temperature']:g})", soft)]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10.5, 3.8))
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
    ax.set_title("ours (mean ± s.d. over subsets)")
    pn = paper.E4
    pvals = [(pn["full_train_acc"], pn["full_test_acc"]), (pn["hard3_train_acc"],
             pn["hard3_test_acc"]), (pn["soft3_train_acc"], pn["soft3_test_acc"])]
    for off, j, color in ((-0.2, 0, "tab:gray"), (0.2, 1, "tab:blue")):
        ax2.bar([i + off for i in x], [100 * v[j] for v in pvals], width=0.38, color=color)
    ax2.set_xticks(list(x), [n.split("\n")[0] for n, _ in rows])
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
