"""The confusion report: files, contents, JSON round trip, odd cases."""

import json

import numpy as np
import pytest

from specialists.confusion import ConfusionAnalysis, analyse
from specialists.report import cluster_order, write_confusion_report

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ["confusion_counts.png", "confusion_normalised.png", "dendrogram.png",
           "per_class_accuracy.png"]


def fashion_analysis() -> ConfusionAnalysis:
    """Ten classes; Shirt is mistaken for T-shirt/top more than anything else."""
    rng = np.random.default_rng(0)
    groups = [[0, 2, 4, 6], [5, 7, 9], [1], [3], [8]]
    y = np.repeat(np.arange(10), 30)
    pred = y.copy()
    for g in groups[:2]:
        for i in g:
            idx = np.flatnonzero(y == i)[:6]  # 6 of 30 go to block-mates
            pred[idx] = rng.choice([j for j in g if j != i], size=6)
    pred[np.flatnonzero(y == 6)[:10]] = 0  # Shirt -> T-shirt/top: the top pair, 10 times
    probs = np.full((len(y), 10), 0.02)
    probs[np.arange(len(y)), pred] = 0.82
    return analyse(probs, y, class_names=FASHION)


def test_report_writes_every_file(tmp_path):
    a = fashion_analysis()
    out = tmp_path / "rep"
    html_path = write_confusion_report(a, out, title="Fashion test")
    assert html_path == out / "report.html"
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    names = {p.name for p in out.iterdir()}
    assert names == set(FIGURES) | {"report.html", "report.md", "report.json"}  # no .tmp left


def test_report_html_is_self_contained_with_tables(tmp_path):
    a = fashion_analysis()
    assert (a.pairs[0]["true"], a.pairs[0]["predicted"], a.pairs[0]["count"]) == (6, 0, 10)
    page = write_confusion_report(a, tmp_path, title="Fashion test").read_text()
    assert "<h1>Fashion test</h1>" in page
    assert page.count("data:image/png;base64,") == 4
    assert "<table" in page
    # The top pair, with class names and count, is in the pairs table.
    assert "<td>Shirt</td><td>T-shirt/top</td><td class=\"num\">10</td>" in page
    assert "src=\"confusion" not in page  # no link to an external file
    # The clusters table lists the planted shoes cluster by name.
    assert "Sandal, Sneaker, Ankle boot" in page


def test_report_markdown_links_figures_relatively(tmp_path):
    a = fashion_analysis()
    write_confusion_report(a, tmp_path)
    md = (tmp_path / "report.md").read_text()
    for name in FIGURES:
        assert f"]({name})" in md
    assert "| 1 | Shirt | T-shirt/top | 10 | 33.33% |" in md
    assert "data:image" not in md


def test_report_json_round_trips(tmp_path):
    a = fashion_analysis()
    write_confusion_report(a, tmp_path)
    d = json.loads((tmp_path / "report.json").read_text())
    assert d == a.to_dict()
    b = ConfusionAnalysis.from_dict(d)
    np.testing.assert_array_equal(b.counts, a.counts)
    assert b.clusters == a.clusters


def test_report_perfect_model_does_not_crash(tmp_path):
    y = np.repeat(np.arange(4), 5)
    a = analyse(np.eye(4)[y], y, class_names=["a", "b", "c", "d"])
    page = write_confusion_report(a, tmp_path).read_text()
    assert "no mistake" in page
    assert "No confusions" in page
    assert (tmp_path / "dendrogram.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("c", [1, 2, 30])
def test_report_other_sizes(tmp_path, c):
    rng = np.random.default_rng(c)
    y = np.repeat(np.arange(c), 4)
    probs = rng.dirichlet(np.ones(c), size=len(y)) if c > 1 else np.ones((len(y), 1))
    a = analyse(probs, y)
    write_confusion_report(a, tmp_path)
    assert (tmp_path / "confusion_counts.png").stat().st_size > 1000
    assert (tmp_path / "dendrogram.png").exists() == (c >= 2)


def test_report_escapes_class_names(tmp_path):
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[1, 0, 0, 1, 2, 2]]
    a = analyse(probs, y, class_names=["<b>bold</b>", "a|b", "plain"], n_clusters=2)
    page = write_confusion_report(a, tmp_path).read_text()
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    md = (tmp_path / "report.md").read_text()
    assert "a\\|b" in md


def test_cluster_order_known_answer():
    order, blocks = cluster_order([[2, 0], [3], [0, 4]], 6)
    # 0 stays with its first cluster; 1 and 5 (in no cluster) come last.
    assert order == [2, 0, 3, 4, 1, 5]
    assert blocks == [(0, 2), (2, 1), (3, 1)]


def test_report_rejects_bad_analysis(tmp_path):
    with pytest.raises(ValueError, match="ConfusionAnalysis"):
        write_confusion_report({"counts": [[1]]}, tmp_path)
    a = fashion_analysis()
    a.class_names = a.class_names[:3]
    with pytest.raises(ValueError, match="counts has shape"):
        write_confusion_report(a, tmp_path)


def test_tables_and_dendrogram_use_the_clustering_affinity(tmp_path, monkeypatch):
    import specialists.report_figures as figures
    from specialists.affinity import class_affinity

    a = fashion_analysis()
    np.testing.assert_array_equal(a.affinity, class_affinity(a.counts, "confusion"))
    top = a.pairs_symmetric[0]
    value = f"{a.affinity[top['a'], top['b']]:.4f}"
    seen = []
    original = figures.linkage

    def spy(distances, method):
        seen.append(distances)
        return original(distances, method=method)

    monkeypatch.setattr(figures, "linkage", spy)
    write_confusion_report(a, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert f"| {value} |" in md and "affinity inside" in md
    # the dendrogram's condensed distances are 1 - affinity / max, pair (0, 1) first
    (d,) = seen
    aff = a.affinity
    assert d[0] == pytest.approx(1 - aff[0, 1] / aff.max())
    assert d.min() == pytest.approx(0.0)


def test_report_lists_the_chosen_subsets(tmp_path):
    from specialists import choose_subsets

    a = fashion_analysis()
    subsets = choose_subsets(a.counts, min_pair_count=5)
    assert subsets  # the fixture's shoes and tops blocks
    write_confusion_report(a, tmp_path, subsets=subsets)
    md = (tmp_path / "report.md").read_text()
    assert "## Specialist subsets" in md
    for s in subsets:
        assert ", ".join(FASHION[i] for i in s) in md
    assert "Trouser" in md.split("## Specialist subsets")[1].split("\n\n")[1]  # left out
    assert json.loads((tmp_path / "report.json").read_text())["subsets"] == subsets


def test_report_says_why_there_is_no_specialist(tmp_path):
    probs = np.eye(5)[[0, 1, 2, 3, 4, 4, 3]]
    y = np.array([0, 1, 2, 3, 4, 4, 2])  # one confusion: a 2 read as a 3
    a = analyse(probs, y)
    assert any("too little confusion" in n.lower() for n in a.notes)
    write_confusion_report(a, tmp_path, subsets=[])
    md = (tmp_path / "report.md").read_text()
    assert ("No specialist: too little confusion to choose specialist subsets: the most "
            "confused pair (2 <-> 3) has 1 confusion(s) among 7 examples") in md
    with pytest.raises(ValueError, match="contains class 7"):
        write_confusion_report(a, tmp_path, subsets=[[0, 7]])


def test_report_for_many_classes_is_tables_not_heatmaps(tmp_path):
    # 300 classes in 30 planted groups of 10: above FIGURE_MAX_CLASSES (60), so no C-wide
    # heatmap or dendrogram; the pairs and clusters are tables, the accuracy shows the 60 worst.
    from specialists.report import FIGURE_MAX_CLASSES

    rng = np.random.default_rng(0)
    c = 300
    group = np.arange(c) // 10
    y = np.repeat(np.arange(c), 10)
    pred = y.copy()
    wrong = rng.random(len(y)) < 0.3
    pred[wrong] = group[y[wrong]] * 10 + rng.integers(0, 10, wrong.sum())  # a block-mate
    probs = np.full((len(y), c), 0.1 / (c - 1))
    probs[np.arange(len(y)), pred] = 0.9
    a = analyse(probs, y, class_names=[f"class {i}" for i in range(c)])
    write_confusion_report(a, tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"per_class_accuracy.png", "report.html", "report.md", "report.json"}
    md = (tmp_path / "report.md").read_text()
    assert f"300 classes: more than {FIGURE_MAX_CLASSES}, so no heatmap" in md
    assert "| # | class a | class b | count (both ways) |" in md
    assert "| # | size | classes | confusion mass |" in md
    assert f"The {FIGURE_MAX_CLASSES} classes with the lowest accuracy, of 300." in md
    per_class = md.split("## Per-class accuracy")[1]
    assert per_class.count("\n| class ") == 1 + FIGURE_MAX_CLASSES  # the header, then the rows
    assert "confusion counts heatmap" not in md
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1
