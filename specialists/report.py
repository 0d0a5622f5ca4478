"""The confusion report: a folder a person opens to see where a model is confused.

:func:`write_confusion_report` turns a :class:`~specialists.confusion.ConfusionAnalysis`
into

* ``report.html``: one self-contained page (CSS inline, figures embedded as
  base64 data URIs) that can be mailed or archived on its own;
* ``report.md``: the same content in Markdown, figures linked relatively;
* ``report.json``: every number, ``analysis.to_dict()``;
* the figures as PNG files: confusion heatmaps (counts and row-normalised,
  classes reordered so that clusters sit together), a dendrogram of the
  classes, and per-class accuracy.

Above ``FIGURE_MAX_CLASSES`` (60) classes a C-wide heatmap or dendrogram has cells and labels too
small to read (the paper's 15,000 classes would be a picture of noise): they are not drawn, the
report says so, and the clusters and the most confused pairs are read from its tables. The
per-class accuracy chart and table then show the ``FIGURE_MAX_CLASSES`` worst classes.

Both documents are rendered from one list of blocks, so they cannot drift
apart. The figures are drawn by :mod:`specialists.report_figures`. Affinities in
the tables and the dendrogram are the ones the clusters were built from
(:attr:`ConfusionAnalysis.affinity`).
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ensemble_kd.io import atomic_write_json, atomic_write_text

from .checks import check_class_lists
from .confusion import ConfusionAnalysis
from .report_figures import (
    accuracy_figure,
    cluster_order,
    dendrogram_figure,
    heatmap_figure,
    save_png,
    worst_classes,
)
from .selection import check_signal
from .sparse import block_sum, is_sparse

__all__ = ["FIGURE_MAX_CLASSES", "cluster_order", "write_confusion_report"]

# Above this many classes: no heatmaps, no dendrogram, the worst classes only in the accuracy
# chart and table. At 60 classes a heatmap cell is 0.2 inch and its labels 6 pt, the least legible.
FIGURE_MAX_CLASSES = 60

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; display: block; margin: 1em 0; }
p.note { background: #fff6d6; border-left: 4px solid #e0b000; padding: .5em 1em; }
"""


# ---------------------------------------------------------------------------
# document blocks -> HTML and Markdown


def _blocks(a: ConfusionAnalysis, title: str, figures: dict[str, str],
            subsets: list[list[int]] | None = None) -> list[tuple]:
    """The report as a list of blocks: ("h1"|"h2"|"p"|"note", text), ("table", head, rows),
    ("img", filename, alt)."""
    names = a.class_names
    c = a.n_classes
    counts = a.counts  # (C, C), dense or sparse (many classes)
    correct = int(counts.diagonal().sum())
    off_total = float(counts.sum() - correct)
    aff = a.affinity  # (C, C) what the clusters and the dendrogram are built from
    aff_what = ("the clipped correlation of the predicted probabilities" if a.kind == "covariance"
                else "the mean of the two directions' error rates")
    b: list[tuple] = [("h1", title)]
    b.append(("p", f"{a.n} examples, {c} classes, overall accuracy {a.accuracy:.4f} "
                   f"({correct} correct, {int(off_total)} confused). "
                   f"Clusters: {len(a.clusters)} ({a.method})."))
    for note in a.notes:
        b.append(("note", note))

    b.append(("h2", "Confusion matrix"))
    if "counts" in figures:
        b.append(("p", "Rows are the true class, columns the predicted class. Classes are "
                       "reordered so that each cluster's members are adjacent; boxes outline the "
                       "clusters."))
        b.append(("img", figures["counts"], "confusion counts heatmap"))
        b.append(("img", figures["normalised"], "row-normalised confusion heatmap"))
    else:
        b.append(("note", f"{c} classes: more than {FIGURE_MAX_CLASSES}, so no heatmap and no "
                          "dendrogram are drawn (a cell per pair of classes would be too small to "
                          "read). The most confused pairs and the clusters are listed in the "
                          "tables below; every count is in report.json."))

    b.append(("h2", "Most confused pairs"))
    rows = [[str(k + 1), names[p["true"]], names[p["predicted"]], str(p["count"]),
             f"{p['rate']:.2%}"] for k, p in enumerate(a.pairs)]
    if rows:
        b.append(("p", "Directed: examples of the true class predicted as the other class; "
                       "rate = share of the true class's examples."))
        b.append(("table", ["#", "true class", "predicted as", "count", "rate"], rows))
        rows = [[str(k + 1), names[p["a"]], names[p["b"]], str(p["count"]), f"{p['rate']:.2%}",
                 f"{float(aff[p['a'], p['b']]):.4f}"] for k, p in enumerate(a.pairs_symmetric)]
        b.append(("p", "Both directions together; rate = share of the two classes' examples "
                       f"that went to the other one; affinity = {aff_what}, the measure the "
                       "clusters are built from."))
        b.append(("table", ["#", "class a", "class b", "count (both ways)", "rate", "affinity"],
                  rows))
    else:
        b.append(("p", "No confusions: every example was classified correctly."))

    b.append(("h2", "Clusters of confusable classes"))
    rows = []
    for k, (members, mass) in enumerate(zip(a.clusters, a.cluster_mass, strict=True)):
        share = f"{mass / off_total:.1%}" if off_total > 0 else "-"
        inside = block_sum(aff, members, members)
        rows.append([str(k + 1), str(len(members)), ", ".join(names[i] for i in members),
                     _fmt_num(mass), share, f"{inside:.4f}"])
    b.append(("p", "Confusion mass = confusions between two different classes of the same "
                   "cluster; share = that mass over all confusions; affinity inside = the "
                   "affinity summed over ordered pairs of the cluster's classes (clusters are "
                   "listed by it)."))
    b.append(("table", ["#", "size", "classes", "confusion mass", "share", "affinity inside"],
              rows))
    if "dendrogram" in figures:
        b.append(("img", figures["dendrogram"], "dendrogram of the classes"))
    if subsets is not None:
        b += _subset_blocks(a, subsets, aff)

    b.append(("h2", "Per-class accuracy"))
    b.append(("img", figures["accuracy"], "per-class accuracy bar chart"))
    shown = range(c) if c <= FIGURE_MAX_CLASSES else worst_classes(a, FIGURE_MAX_CLASSES)
    if c > FIGURE_MAX_CLASSES:
        b.append(("p", f"The {FIGURE_MAX_CLASSES} classes with the lowest accuracy, of {c}."))
    rows = []
    for i in shown:
        wrong = _row(counts, i)  # (C,)
        n_i, n_correct = int(wrong.sum()), int(wrong[i])
        wrong[i] = 0
        top_wrong = f"{names[int(wrong.argmax())]} ({int(wrong.max())})" if wrong.max() > 0 \
            else "-"
        acc = a.per_class_accuracy[i]
        rows.append([names[i], str(n_i), str(n_correct),
                     "-" if np.isnan(acc) else f"{acc:.3f}", top_wrong])
    b.append(("table", ["class", "examples", "correct", "accuracy", "most often predicted as"],
              rows))
    return b


def _subset_blocks(a: ConfusionAnalysis, subsets: list[list[int]],
                   aff: np.ndarray) -> list[tuple]:
    """The specialist subsets chosen (``choose_subsets``), or why there are none."""
    names, counts = a.class_names, a.counts
    b: list[tuple] = [("h2", "Specialist subsets")]
    if not subsets:
        check = check_signal(counts, class_names=names)
        why = check.reason if check.too_weak else "no class subset qualifies"
        b.append(("note", f"No specialist: {why}."))
        return b
    rows = []
    for k, s in enumerate(subsets):
        confused = block_sum(counts, s, s) - float(counts.diagonal()[s].sum())
        rows.append([str(k + 1), str(len(s)), ", ".join(names[i] for i in s),
                     _fmt_num(confused), f"{block_sum(aff, s, s):.4f}"])
    left = [names[i] for i in range(a.n_classes) if not any(i in s for s in subsets)]
    b.append(("p", "One dustbin specialist is trained per subset. Classes in no subset "
                   f"(rarely confused): {', '.join(left) if left else 'none'}."))
    b.append(("table", ["#", "size", "classes", "confusions inside", "affinity inside"], rows))
    return b


def _row(m: Any, i: int) -> np.ndarray:
    """Row ``i`` of a dense or sparse (C, C) matrix, as a dense (C,) copy."""
    if is_sparse(m):
        return m[[i]].toarray().ravel()
    return np.array(m[i])


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.3g}"


def _is_num(s: str) -> bool:
    return s.replace(".", "", 1).replace("%", "").replace("-", "", 1).isdigit()


def _to_html(blocks: list[tuple], title: str, images: dict[str, bytes]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>"]
    for blk in blocks:
        kind = blk[0]
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{e(blk[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{e(blk[1])}</p>")
        elif kind == "note":
            out.append(f'<p class="note">{e(blk[1])}</p>')
        elif kind == "table":
            out.append("<table>")
            out.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in blk[1]) + "</tr>")
            for row in blk[2]:
                cells = "".join(
                    f'<td class="num">{e(v)}</td>' if _is_num(v) else f"<td>{e(v)}</td>"
                    for v in row)
                out.append(f"<tr>{cells}</tr>")
            out.append("</table>")
        elif kind == "img":
            data = base64.b64encode(images[blk[1]]).decode("ascii")
            out.append(f'<img src="data:image/png;base64,{data}" alt="{e(blk[2])}">')
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _md_cell(s: str) -> str:
    # A "|" inside a class name would split the Markdown table cell.
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _to_markdown(blocks: list[tuple]) -> str:
    out: list[str] = []
    for blk in blocks:
        kind = blk[0]
        if kind == "h1":
            out.append(f"# {blk[1]}")
        elif kind == "h2":
            out.append(f"## {blk[1]}")
        elif kind == "p":
            out.append(blk[1])
        elif kind == "note":
            out.append(f"> **Note:** {blk[1]}")
        elif kind == "table":
            out.append("| " + " | ".join(_md_cell(h) for h in blk[1]) + " |")
            out.append("|" + "|".join("---:" if _is_num(blk[2][0][j]) else "---"
                                      for j in range(len(blk[1]))) + "|"
                       if blk[2] else "|" + "---|" * len(blk[1]))
            for row in blk[2]:
                out.append("| " + " | ".join(_md_cell(v) for v in row) + " |")
        elif kind == "img":
            out.append(f"![{blk[2]}]({blk[1]})")
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# entry point


def write_confusion_report(analysis: ConfusionAnalysis, out_dir: str | os.PathLike, *,
                           title: str = "Confusion report",
                           subsets: list[list[int]] | None = None) -> Path:
    """Write the confusion report for ``analysis`` into the folder ``out_dir``.

    Files written (each atomically): ``report.html`` (self-contained),
    ``report.md``, ``report.json`` (``analysis.to_dict()``), and the figures
    ``confusion_counts.png``, ``confusion_normalised.png``, ``dendrogram.png``
    (when 2 <= C <= ``FIGURE_MAX_CLASSES``; the heatmaps when C <= ``FIGURE_MAX_CLASSES``)
    and ``per_class_accuracy.png`` (the worst ``FIGURE_MAX_CLASSES`` classes above that).

    Args:
        analysis: the output of :func:`specialists.confusion.analyse`.
        out_dir: destination folder, created if missing; existing report files are replaced.
        title: heading of the report.
        subsets: the specialist subsets chosen (:func:`specialists.selection.choose_subsets`):
            listed in a section of their own, or, when empty, the reason there are none. Also
            stored in ``report.json`` under ``"subsets"``. None: no such section.

    Returns:
        The path of ``report.html``.
    """
    if not isinstance(analysis, ConfusionAnalysis):
        raise ValueError(
            f"analysis must be a ConfusionAnalysis, got {type(analysis).__name__}")
    c = analysis.n_classes
    if np.shape(analysis.counts) != (c, c):
        raise ValueError(f"analysis.counts has shape {np.shape(analysis.counts)} but there are "
                         f"{c} class names")
    if subsets is not None:
        subsets = check_class_lists(subsets, c)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order, blocks = cluster_order(analysis.clusters, c)

    few = c <= FIGURE_MAX_CLASSES
    figs: dict[str, tuple[str, Figure]] = {
        "accuracy": ("per_class_accuracy.png",
                     accuracy_figure(analysis, limit=None if few else FIGURE_MAX_CLASSES)),
    }
    if few:
        figs["counts"] = ("confusion_counts.png",
                          heatmap_figure(analysis, order, blocks, normalised=False))
        figs["normalised"] = ("confusion_normalised.png",
                              heatmap_figure(analysis, order, blocks, normalised=True))
    if 2 <= c <= FIGURE_MAX_CLASSES:  # a tree needs at least two leaves
        figs["dendrogram"] = ("dendrogram.png", dendrogram_figure(analysis))
    images = {name: save_png(fig, out / name) for name, fig in figs.values()}
    doc = _blocks(analysis, title, {key: name for key, (name, _) in figs.items()}, subsets)

    data = analysis.to_dict()
    if subsets is not None:
        data["subsets"] = subsets
    # Many classes: millions of stored counts, on one line (indented, each number took a line).
    atomic_write_json(out / "report.json", data, indent=None if analysis.sparse else 2)
    atomic_write_text(out / "report.md", _to_markdown(doc))
    html_path = out / "report.html"
    atomic_write_text(html_path, _to_html(doc, title, images))
    return html_path
