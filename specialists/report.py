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

Both documents are rendered from one list of blocks, so they cannot drift
apart. Figures are drawn on :class:`matplotlib.figure.Figure` objects without
pyplot, so no global state or GUI backend is involved.
"""

from __future__ import annotations

import base64
import html
import io
import os
import warnings
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy.cluster.hierarchy import dendrogram, linkage
from scipy.spatial.distance import squareform

from ensemble_kd.io import atomic_path, atomic_write_json, atomic_write_text
from specialists.confusion import ConfusionAnalysis, symmetrised_confusion

__all__ = ["cluster_order", "write_confusion_report"]

_DPI = 100
# Cell annotations stay legible up to about this many classes.
_ANNOTATE_MAX = 15
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
# ordering


def cluster_order(clusters: list[list[int]], n_classes: int) -> tuple[list[int], list[tuple]]:
    """Order classes so that each cluster's members are adjacent.

    Args:
        clusters: class subsets (a partition, or overlapping subsets: a class is
            placed with the first cluster that holds it).
        n_classes: C.

    Returns:
        ``(order, blocks)``: a permutation of ``range(C)`` (classes in no cluster
        come last, in index order) and one ``(start, size)`` per cluster's block
        in that order (empty blocks omitted).
    """
    order: list[int] = []
    seen: set[int] = set()
    blocks = []
    for members in clusters:
        start = len(order)
        for i in members:
            if i not in seen and 0 <= i < n_classes:
                seen.add(i)
                order.append(int(i))
        if len(order) > start:
            blocks.append((start, len(order) - start))
    order += [i for i in range(n_classes) if i not in seen]
    return order, blocks


# ---------------------------------------------------------------------------
# figures


def _label_fontsize(c: int) -> float:
    return 10.0 if c <= 15 else 8.0 if c <= 40 else 6.0


def _label_inches(names: list[str], fontsize: float) -> float:
    """Rough width of the longest label, so figures leave room for it."""
    longest = max((len(s) for s in names), default=1)
    return 0.6 * fontsize / 72 * longest + 0.2


def _no_white(name: str) -> ListedColormap:
    """``name`` without its near-white start: a single confusion must stand out from blank 0."""
    return ListedColormap(colormaps[name](np.linspace(0.15, 1.0, 256)), name=f"{name}_nw")


def _heatmap(a: ConfusionAnalysis, order: list[int], blocks: list[tuple], *,
             normalised: bool) -> Figure:
    """Confusion heatmap with rows/columns in cluster order and cluster blocks outlined.

    Raw counts use a log colour scale (zeros blank) so that rare confusions are
    visible next to the large diagonal. The row-normalised map colours only the
    off-diagonal rates (the diagonal, i.e. per-class accuracy, is shown in grey)
    so that its colour scale is spent on the confusions.
    """
    c = a.n_classes
    names = [a.class_names[i] for i in order]
    m = (a.normalised if normalised else a.counts)[np.ix_(order, order)].astype(float)  # (C, C)
    fs = _label_fontsize(c)
    cell = 0.55 if c <= _ANNOTATE_MAX else max(0.2, min(0.4, 12.0 / c))
    lab = _label_inches(names, fs)
    fig = Figure(figsize=(max(c * cell + lab + 1.8, 5.5), c * cell + lab + 1.2), dpi=_DPI,
                 layout="constrained")
    ax = fig.add_subplot()
    off = ~np.eye(c, dtype=bool)
    if normalised:
        shown = np.ma.masked_array(m, mask=~off | (m == 0))
        vmax = float(m[off].max()) if c > 1 else 0.0
        vmax = vmax if vmax > 0 else 1.0  # no confusion at all: any positive scale will do
        im = ax.imshow(shown, cmap=_no_white("Reds"), vmin=0, vmax=vmax, interpolation="nearest")
        ax.imshow(np.ma.masked_array(np.ones_like(m), mask=off), cmap="Greys", vmin=0, vmax=4,
                  interpolation="nearest")
        cbar_label = "rate (share of the true class), off-diagonal"
    else:
        shown = np.ma.masked_array(m, mask=m == 0)
        vmax = max(float(m.max()), 1.0)
        im = ax.imshow(shown, cmap=_no_white("Blues"), norm=LogNorm(vmin=1, vmax=max(vmax, 1.5)),
                       interpolation="nearest")
        cbar_label = "count (log scale; blank = 0)"
    ax.set_facecolor("white")
    cb = fig.colorbar(im, ax=ax, shrink=min(1.0, 0.4 + 4.0 / max(c, 1)), pad=0.02)
    cb.set_label(cbar_label)
    if not normalised:
        # Plain 1-2-5 ticks: a reader should not have to decode "3 x 10^0".
        ticks = [m_ * 10**e for e in range(int(np.log10(vmax)) + 1) for m_ in (1, 2, 5)]
        ticks = [t for t in ticks if t <= vmax]
        cb.ax.minorticks_off()
        cb.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    ax.set_xticks(range(c), names, rotation=60 if c <= 40 else 90, ha="right",
                  rotation_mode="anchor", fontsize=fs)
    ax.set_yticks(range(c), names, fontsize=fs)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.tick_params(length=2)
    for start, size in blocks:
        ax.add_patch(Rectangle((start - 0.5, start - 0.5), size, size, fill=False,
                               edgecolor="#222", lw=2.0 if c <= 40 else 1.2))
    if c <= _ANNOTATE_MAX:
        _annotate(ax, m, im, normalised)
    kind = "row-normalised rates" if normalised else "counts"
    ax.set_title(f"Confusion ({kind})\n{a.n} examples; boxes = clusters", fontsize=11)
    return fig


def _annotate(ax, m: np.ndarray, im, normalised: bool) -> None:
    """Write each cell's value in it, dark on light cells and light on dark ones."""
    c = m.shape[0]
    for i in range(c):
        for j in range(c):
            v = m[i, j]
            if v == 0 and i != j:
                continue
            text = f"{v:.2f}" if normalised else f"{int(v)}"
            if (i == j and normalised) or v == 0:
                colour = "black"
            else:
                rgba = im.cmap(im.norm(v))
                colour = "white" if 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.5 \
                    else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=8 if c <= 10 else 7,
                    color=colour)


def _cluster_colours(clusters: list[list[int]], n_classes: int) -> list:
    """One colour per class: that of the first cluster holding it (grey if none)."""
    # tab10 cycles for many clusters: its colours stay readable on white, tab20's pale half not.
    cmap = colormaps["tab10"]
    out: list = ["#666"] * n_classes
    for k in reversed(range(len(clusters))):  # reversed: the first cluster wins
        for i in clusters[k]:
            if 0 <= i < n_classes:
                out[i] = cmap(k % cmap.N)
    return out


def _dendrogram(a: ConfusionAnalysis) -> Figure:
    """Average-linkage dendrogram of the classes, distance = 1 - normalised affinity.

    Leaf labels take their cluster's colour, so the tree can be compared with
    the clusters the report lists.
    """
    c = a.n_classes
    s = symmetrised_confusion(a.counts)  # (C, C), zero diagonal
    # Normalise to [0, 1] so the most-confused pair sits at distance 0.
    d = 1.0 - s / s.max() if s.max() > 0 else np.ones_like(s)
    np.fill_diagonal(d, 0.0)
    z = linkage(squareform(d, checks=False), method="average")
    fs = _label_fontsize(c)
    lab = _label_inches(a.class_names, fs)
    fig = Figure(figsize=(6.5 + lab, max(2.5, 0.24 * c + 1.2)), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    with warnings.catch_warnings():
        # All merges at one height (e.g. C = 2) make scipy warn about a flat x range;
        # the fixed limits below replace that range anyway.
        warnings.filterwarnings("ignore", message="Attempting to set identical")
        tree = dendrogram(z, labels=list(a.class_names), orientation="left", ax=ax,
                          leaf_font_size=fs, color_threshold=0.0, above_threshold_color="#444")
    ax.set_xlim(1.05, 0.0)  # distances lie in [0, 1]; the leaves sit at 0 on the right
    colours = _cluster_colours(a.clusters, c)
    for label, i in zip(ax.get_yticklabels(), tree["leaves"], strict=True):
        label.set_color(colours[i])
    ax.set_xlabel("distance = 1 - symmetrised confusion rate / its maximum\n"
                  "(label colour = cluster)")
    ax.set_title("Classes joined by how often they are confused (average linkage)", fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _accuracy_bars(a: ConfusionAnalysis) -> Figure:
    """Per-class accuracy, worst first, with the overall accuracy as a line."""
    c = a.n_classes
    acc = np.asarray(a.per_class_accuracy, dtype=float)  # (C,), NaN = no example
    # Worst classes on top, where the eye starts; classes with no example last.
    order = sorted(range(c), key=lambda i: (np.isnan(acc[i]), acc[i] if not np.isnan(acc[i])
                                            else 0.0, i))
    names = [a.class_names[i] for i in order]
    vals = np.nan_to_num(acc[order], nan=0.0)
    fs = _label_fontsize(c)
    lab = _label_inches(names, fs)
    fig = Figure(figsize=(6.5 + lab, max(2.5, 0.24 * c + 1.2)), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(c)
    ax.barh(y, vals, color="#4a7fb5", height=0.75)
    ax.set_yticks(y, names, fontsize=fs)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.0)
    ax.axvline(a.accuracy, color="#c0392b", ls="--", lw=1.5)
    if c <= 40:
        for yi, i in enumerate(order):
            if np.isnan(acc[i]):
                ax.text(0.01, yi, "no examples", va="center", fontsize=fs - 1, color="#666")
            elif vals[yi] >= 0.2:
                # Inside the bar's end, so the dashed line never crosses the number.
                ax.text(vals[yi] - 0.01, yi, f"{vals[yi]:.3f}", va="center", ha="right",
                        fontsize=fs - 1, color="white")
            else:
                ax.text(vals[yi] + 0.01, yi, f"{vals[yi]:.3f}", va="center", fontsize=fs - 1)
    ax.set_xlabel("accuracy (share of the class's examples predicted correctly)")
    ax.set_title(f"Per-class accuracy, worst first; dashed line = overall accuracy "
                 f"{a.accuracy:.3f}", fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _save_png(fig: Figure, path: Path) -> bytes:
    """Write ``fig`` to ``path`` atomically and return the PNG bytes (for embedding)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    data = buf.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    # Figures made without pyplot are not registered anywhere: dropping the
    # last reference frees them; clearing first releases the artists at once.
    fig.clear()
    return data


# ---------------------------------------------------------------------------
# document blocks -> HTML and Markdown


def _blocks(a: ConfusionAnalysis, title: str, figures: dict[str, str]) -> list[tuple]:
    """The report as a list of blocks: ("h1"|"h2"|"p"|"note", text), ("table", head, rows),
    ("img", filename, alt)."""
    names = a.class_names
    c = a.n_classes
    counts = np.asarray(a.counts)
    off_total = float(counts.sum() - np.trace(counts))
    b: list[tuple] = [("h1", title)]
    b.append(("p", f"{a.n} examples, {c} classes, overall accuracy {a.accuracy:.4f} "
                   f"({int(np.trace(counts))} correct, {int(off_total)} confused). "
                   f"Clusters: {len(a.clusters)} ({a.method})."))
    for note in a.notes:
        b.append(("note", note))

    b.append(("h2", "Confusion matrix"))
    b.append(("p", "Rows are the true class, columns the predicted class. Classes are reordered "
                   "so that each cluster's members are adjacent; boxes outline the clusters."))
    b.append(("img", figures["counts"], "confusion counts heatmap"))
    b.append(("img", figures["normalised"], "row-normalised confusion heatmap"))

    b.append(("h2", "Most confused pairs"))
    rows = [[str(k + 1), names[p["true"]], names[p["predicted"]], str(p["count"]),
             f"{p['rate']:.2%}"] for k, p in enumerate(a.pairs)]
    if rows:
        b.append(("p", "Directed: examples of the true class predicted as the other class; "
                       "rate = share of the true class's examples."))
        b.append(("table", ["#", "true class", "predicted as", "count", "rate"], rows))
        rows = [[str(k + 1), names[p["a"]], names[p["b"]], str(p["count"]), f"{p['rate']:.2%}"]
                for k, p in enumerate(a.pairs_symmetric)]
        b.append(("p", "Both directions together; rate = share of the two classes' examples "
                       "that went to the other one."))
        b.append(("table", ["#", "class a", "class b", "count (both ways)", "rate"], rows))
    else:
        b.append(("p", "No confusions: every example was classified correctly."))

    b.append(("h2", "Clusters of confusable classes"))
    rows = []
    for k, (members, mass) in enumerate(zip(a.clusters, a.cluster_mass, strict=True)):
        share = f"{mass / off_total:.1%}" if off_total > 0 else "-"
        rows.append([str(k + 1), str(len(members)), ", ".join(names[i] for i in members),
                     _fmt_num(mass), share])
    b.append(("p", "Confusion mass = confusions between two different classes of the same "
                   "cluster; share = that mass over all confusions."))
    b.append(("table", ["#", "size", "classes", "confusion mass", "share"], rows))
    if "dendrogram" in figures:
        b.append(("img", figures["dendrogram"], "dendrogram of the classes"))

    b.append(("h2", "Per-class accuracy"))
    b.append(("img", figures["accuracy"], "per-class accuracy bar chart"))
    rows = []
    for i in range(c):
        n_i = int(counts[i].sum())
        wrong = counts[i].copy()
        wrong[i] = 0
        top_wrong = f"{names[int(wrong.argmax())]} ({int(wrong.max())})" if wrong.max() > 0 \
            else "-"
        acc = a.per_class_accuracy[i]
        rows.append([names[i], str(n_i), str(int(counts[i, i])),
                     "-" if np.isnan(acc) else f"{acc:.3f}", top_wrong])
    b.append(("table", ["class", "examples", "correct", "accuracy", "most often predicted as"],
              rows))
    return b


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
                           title: str = "Confusion report") -> Path:
    """Write the confusion report for ``analysis`` into the folder ``out_dir``.

    Files written (each atomically): ``report.html`` (self-contained),
    ``report.md``, ``report.json`` (``analysis.to_dict()``), and the figures
    ``confusion_counts.png``, ``confusion_normalised.png``, ``dendrogram.png``
    (when C >= 2) and ``per_class_accuracy.png``.

    Args:
        analysis: the output of :func:`specialists.confusion.analyse`.
        out_dir: destination folder, created if missing; existing report files are replaced.
        title: heading of the report.

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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order, blocks = cluster_order(analysis.clusters, c)

    figs: dict[str, tuple[str, Figure]] = {
        "counts": ("confusion_counts.png", _heatmap(analysis, order, blocks, normalised=False)),
        "normalised": ("confusion_normalised.png",
                       _heatmap(analysis, order, blocks, normalised=True)),
        "accuracy": ("per_class_accuracy.png", _accuracy_bars(analysis)),
    }
    if c >= 2:  # a tree needs at least two leaves
        figs["dendrogram"] = ("dendrogram.png", _dendrogram(analysis))
    images = {name: _save_png(fig, out / name) for name, fig in figs.values()}
    doc = _blocks(analysis, title, {key: name for key, (name, _) in figs.items()})

    atomic_write_json(out / "report.json", analysis.to_dict())
    atomic_write_text(out / "report.md", _to_markdown(doc))
    html_path = out / "report.html"
    atomic_write_text(html_path, _to_html(doc, title, images))
    return html_path
