"""The confusion analysis for many classes: sparse matrices give the dense answers, and a report
of thousands of classes never builds a (C, C) array.

References are independent of the code: brute-force loops over pairs, ``np.cov`` of an explicitly
truncated array, and the dense analysis of the same predictions.
"""

import json
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

from specialists import planted_confusion
from specialists.affinity import covariance_affinity, prediction_covariance
from specialists.confusion import SPARSE_MIN_CLASSES, ConfusionAnalysis, analyse, analyse_counts
from specialists.counts import cluster_mass, confusion_matrix, most_confused_pairs
from specialists.report import write_confusion_report
from specialists.selection import expected_confusion, subsets_for_generalist


def paired_probs(n_classes: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) probabilities and (N,) labels where class 2k is confused with 2k + 1 only."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    z = rng.normal(size=(n, n_classes))
    z[np.arange(n), y] += 2.5
    z[np.arange(n), y ^ 1] += 2.0  # the planted partner
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True), y


def labels_of(clusters: list[list[int]], n_classes: int) -> np.ndarray:
    out = np.full(n_classes, -1)
    for k, members in enumerate(clusters):
        out[members] = k
    assert (out >= 0).all()  # a partition
    return out


# ---------------------------------------------------------------------------
# counting, dense or sparse


def test_most_confused_pairs_match_a_brute_force_listing_dense_and_sparse():
    rng = np.random.default_rng(1)
    for _ in range(60):
        c = int(rng.integers(1, 7))
        cm = rng.integers(0, 4, (c, c)).astype(float)  # many ties in count
        for symmetric in (False, True):
            listing = []  # (-count, first, second), every confused pair
            for a in range(c):
                for b in range(c):
                    n = cm[a, b] + cm[b, a] if symmetric else cm[a, b]
                    if (a < b if symmetric else a != b) and n > 0:
                        listing.append((-n, a, b))
            listing.sort()
            keys = ("a", "b") if symmetric else ("true", "predicted")
            for top in (None, 0, 1, 3):
                want = listing if top is None else listing[:top]
                for m in (cm, sp.csr_array(cm)):
                    got = most_confused_pairs(m, top, symmetric=symmetric)
                    assert [(-p["count"], p[keys[0]], p[keys[1]]) for p in got] == want


def test_sparse_confusion_matrix_and_cluster_mass_equal_the_dense_ones():
    rng = np.random.default_rng(2)
    y_true, y_pred = rng.integers(0, 9, 500), rng.integers(0, 9, 500)
    counts = np.zeros((9, 9), dtype=np.int64)
    np.add.at(counts, (y_true, y_pred), 1)  # the reference tally
    cm = confusion_matrix(y_true, y_pred, 9, sparse=True)
    assert sp.issparse(cm) and cm.dtype == np.int64
    np.testing.assert_array_equal(cm.toarray(), counts)
    clusters = [[0, 4, 7], [1], [2, 3, 5, 6, 8]]
    want = [float(counts[np.ix_(s, s)].sum() - counts[s, s].sum()) for s in clusters]
    assert cluster_mass(cm, clusters) == want == cluster_mass(counts, clusters)


def test_sparse_prediction_covariance_is_the_covariance_of_the_truncated_predictions():
    probs, _ = paired_probs(12, 400)
    # top k = C: nothing truncated, the exact covariance
    np.testing.assert_allclose(prediction_covariance(probs, top_k=12).toarray(),
                               np.cov(probs, rowvar=False), atol=1e-15)
    k = 3
    truncated = probs.copy()
    np.put_along_axis(truncated, np.argsort(-probs, axis=1)[:, k:], 0.0, axis=1)
    reference = np.cov(truncated, rowvar=False)  # dense, of the explicitly truncated array
    got = prediction_covariance(probs, top_k=k)
    assert sp.issparse(got)
    stored = got.toarray() != 0
    np.testing.assert_allclose(got.toarray()[stored], reference[stored], atol=1e-15)
    assert (reference[~stored] <= 1e-15).all()  # what is left out is never a positive one
    np.testing.assert_allclose(covariance_affinity(got).toarray(),
                               covariance_affinity(reference), atol=1e-12)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="top_k must be a positive int"):
            prediction_covariance(probs, top_k=bad)


# ---------------------------------------------------------------------------
# the analysis and its report


@pytest.mark.parametrize("kind", ["confusion", "covariance"])
def test_sparse_analysis_gives_the_dense_analysis(tmp_path, kind):
    probs, y = paired_probs(16, 3000)
    dense, sparse = analyse(probs, y, kind=kind), analyse(probs, y, kind=kind, sparse=True)
    assert not dense.sparse and sparse.sparse
    np.testing.assert_array_equal(sparse.counts.toarray(), dense.counts)
    np.testing.assert_allclose(sparse.normalised.toarray(), dense.normalised, atol=1e-15)
    np.testing.assert_array_equal(sparse.per_class_accuracy, dense.per_class_accuracy)
    assert (sparse.pairs, sparse.pairs_symmetric, sparse.accuracy) == (
        dense.pairs, dense.pairs_symmetric, dense.accuracy)
    if kind == "confusion":  # the covariance is truncated to each example's top 10 when sparse
        assert sparse.clusters == dense.clusters
        assert sparse.cluster_mass == dense.cluster_mass
        write_confusion_report(dense, tmp_path / "dense")
        write_confusion_report(sparse, tmp_path / "sparse")
        assert ((tmp_path / "sparse" / "report.md").read_text()
                == (tmp_path / "dense" / "report.md").read_text())
    else:
        assert sparse.covariance is not None and sp.issparse(sparse.covariance)
        # every planted pair is one cluster's pair at least: the same signal as the dense one
        assert adjusted_rand_score(labels_of(sparse.clusters, 16),
                                   labels_of(dense.clusters, 16)) > 0.5


def test_sparse_analysis_round_trips_through_json(tmp_path):
    probs, y = paired_probs(16, 2000)
    a = analyse(probs, y, kind="covariance", sparse=True)
    write_confusion_report(a, tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert set(saved["counts"]) == {"shape", "row", "col", "data"}
    b = ConfusionAnalysis.from_dict(saved)
    assert b.sparse and (b.counts != a.counts).nnz == 0
    np.testing.assert_allclose(b.normalised.toarray(), a.normalised.toarray())
    np.testing.assert_allclose(b.covariance.toarray(), a.covariance.toarray())
    assert (b.clusters, b.pairs, b.kind) == (a.clusters, a.pairs, a.kind)

    saved["counts"]["row"][0] = 16  # outside the 16 classes
    with pytest.raises(ValueError, match="index outside its shape"):
        ConfusionAnalysis.from_dict(saved)
    saved["counts"]["row"] = saved["counts"]["row"][1:]
    with pytest.raises(ValueError, match="of one length"):
        ConfusionAnalysis.from_dict(saved)


def test_many_classes_are_analysed_sparse_and_reported_without_a_heatmap(tmp_path):
    c = SPARSE_MIN_CLASSES + 2  # just above: sparse by default
    probs, y = paired_probs(c, 3 * c, seed=3)
    a = analyse(probs, y)
    assert a.sparse and a.covariance is None  # the covariance only when clustering on it
    top = a.pairs_symmetric[0]
    assert top["b"] == top["a"] ^ 1  # the most confused pair is a planted one
    write_confusion_report(a, tmp_path)
    assert not (tmp_path / "confusion_counts.png").exists()
    md = (tmp_path / "report.md").read_text()
    assert f"{c} classes: more than 60, so no heatmap" in md
    assert f"The 60 classes with the lowest accuracy, of {c}." in md


def test_a_report_of_thousands_of_classes_builds_no_class_by_class_array(tmp_path):
    # 4,000 classes in 40 planted groups, about 40 stored counts per class: one (C, C) float64
    # array would take 128 MB, the sparse counts take 2 MB.
    planted = planted_confusion(40, 100, ratio=100.0, examples_per_class=100.0, seed=4)
    c = planted.counts.shape[0]
    dense_bytes = c * c * 8
    tracemalloc.start()
    try:
        a = analyse_counts(planted.counts, n_clusters=40)
        _, analyse_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        write_confusion_report(a, tmp_path)
        _, report_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert analyse_peak < dense_bytes / 4, f"analyse: peak {analyse_peak / 1e6:.0f} MB"
    assert report_peak < dense_bytes / 4, f"report: peak {report_peak / 1e6:.0f} MB"
    assert adjusted_rand_score(planted.groups, labels_of(a.clusters, c)) == 1.0
    assert a.n == int(planted.counts.sum())
    assert (tmp_path / "report.json").stat().st_size < 20 * planted.counts.nnz  # one line


def test_analyse_counts_rejects_bad_input():
    counts = np.array([[3, 1], [0, 2]])
    with pytest.raises(ValueError, match="whole numbers"):
        analyse_counts(counts + 0.5)
    with pytest.raises(ValueError, match="no example"):
        analyse_counts(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="covariance has shape"):
        analyse_counts(counts, covariance=np.eye(3), kind="covariance")
    with pytest.raises(ValueError, match="needs a dense"):
        analyse_counts(sp.csr_array(np.array([[5, 2, 0], [1, 5, 0], [0, 0, 5]])),
                       n_clusters=2, method="kmeans")
    a = analyse_counts(counts)  # and a good one: the known answer
    assert a.n == 6 and a.accuracy == pytest.approx(5 / 6)
    assert a.pairs == [{"true": 0, "predicted": 1, "count": 1, "rate": 0.25}]


def test_sparse_expected_confusion_keeps_each_examples_top_classes():
    probs, y = paired_probs(12, 300, seed=5)
    reference = np.zeros((12, 12))
    np.add.at(reference, y, probs)  # every probability, summed per true class
    np.testing.assert_allclose(expected_confusion(probs, y, 12), reference)
    np.testing.assert_allclose(expected_confusion(probs, y, 12, top_k=12).toarray(), reference)
    truncated = probs.copy()
    np.put_along_axis(truncated, np.argsort(-probs, axis=1)[:, 2:], 0.0, axis=1)
    reference = np.zeros((12, 12))
    np.add.at(reference, y, truncated)
    got = expected_confusion(probs, y, 12, top_k=2)
    assert sp.issparse(got)
    np.testing.assert_allclose(got.toarray(), reference)


def test_weak_sparse_validation_counts_fall_back_to_a_sparse_expected_confusion():
    probs, y = paired_probs(12, 2400, seed=6)
    weak = confusion_matrix(y[:30], probs[:30].argmax(axis=1), 12, sparse=True)  # 30 examples
    seen = {}

    def train_probs():
        seen["called"] = True
        return probs

    subsets, why = subsets_for_generalist(weak, train_probs=train_probs, train_labels=y)
    assert seen and "expected confusion" in why
    assert subsets and all(len(s) == 2 and s[1] == s[0] ^ 1 for s in subsets)
