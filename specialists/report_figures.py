"""The confusion report's figures: heatmaps in cluster order, the dendrogram, per-class accuracy.

Drawn on :class:`matplotlib.figure.Figure` objects without pyplot, so no global state or GUI
backend is involved. The dendrogram joins classes by the same affinity the clusters were built
from (:attr:`ConfusionAnalysis.affinity`), so tree and clusters can be compared.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from matplotlib import colormaps
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy.cluster.hierarchy import dendrogram, linkage
from scipy.spatial.distance import squareform

from ensemble_kd.io import atomic_path

from .confusion import ConfusionAnalysis

__all__ = ["accuracy_figure", "cluster_order", "dendrogram_figure", "heatmap_figure", "save_png",
           "worst_classes"]

_DPI = 100
# Cell annotations stay legible up to about this many classes.
ANNOTATE_MAX = 15


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


def _dense(m: Any) -> np.ndarray:
    """A (C, C) matrix as a dense array: the figures are drawn for few classes only."""
    return m.toarray() if sp.issparse(m) else np.asarray(m)


def heatmap_figure(a: ConfusionAnalysis, order: list[int], blocks: list[tuple], *,
             normalised: bool) -> Figure:
    """Confusion heatmap with rows/columns in cluster order and cluster blocks outlined.

    Raw counts use a log colour scale (zeros blank) so that rare confusions are
    visible next to the large diagonal. The row-normalised map colours only the
    off-diagonal rates (the diagonal, i.e. per-class accuracy, is shown in grey)
    so that its colour scale is spent on the confusions.
    """
    c = a.n_classes
    names = [a.class_names[i] for i in order]
    m = _dense(a.normalised if normalised else a.counts)[np.ix_(order, order)].astype(float)
    fs = _label_fontsize(c)
    cell = 0.55 if c <= ANNOTATE_MAX else max(0.2, min(0.4, 12.0 / c))
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
    if c <= ANNOTATE_MAX:
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


def dendrogram_figure(a: ConfusionAnalysis) -> Figure:
    """Average-linkage dendrogram of the classes, distance = 1 - affinity / its maximum.

    Leaf labels take their cluster's colour, so the tree can be compared with
    the clusters the report lists.
    """
    c = a.n_classes
    s = _dense(a.affinity)  # (C, C), zero diagonal: what the clusters were built from
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
    what = "covariance affinity" if a.kind == "covariance" else "affinity (symmetrised error rate)"
    ax.set_xlabel(f"distance = 1 - {what} / its maximum\n(label colour = cluster)")
    ax.set_title("Classes joined by how often they are confused (average linkage)", fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def worst_classes(a: ConfusionAnalysis, limit: int | None = None) -> list[int]:
    """Classes by accuracy, worst first (classes with no example last), at most ``limit``."""
    acc = np.asarray(a.per_class_accuracy, dtype=float)  # (C,), NaN = no example
    order = sorted(range(a.n_classes), key=lambda i: (np.isnan(acc[i]), acc[i]
                                                      if not np.isnan(acc[i]) else 0.0, i))
    return order if limit is None else order[:limit]


def accuracy_figure(a: ConfusionAnalysis, limit: int | None = None) -> Figure:
    """Per-class accuracy, worst first, with the overall accuracy as a line; the ``limit`` worst
    classes only when given."""
    acc = np.asarray(a.per_class_accuracy, dtype=float)  # (C,), NaN = no example
    # Worst classes on top, where the eye starts; classes with no example last.
    order = worst_classes(a, limit)
    c = len(order)
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
    which = "" if c == a.n_classes else f" ({c} worst of {a.n_classes})"
    ax.set_title(f"Per-class accuracy, worst first{which}; dashed line = overall accuracy "
                 f"{a.accuracy:.3f}", fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def save_png(fig: Figure, path: Path) -> bytes:
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
