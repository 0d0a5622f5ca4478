"""Subsets from a sparse confusion matrix (issue 11, "the paper's scale"): planted groups are
recovered, sparse and dense inputs agree, the sparse path never builds a (C, C) array, bad input
says what is wrong."""

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score
from test_clustering import planted_covariance
from test_selection import fashion_confusion, planted_blocks

from specialists import choose_subsets, cluster_classes, planted_confusion
from specialists.affinity import class_affinity, confusion_affinity, covariance_affinity


def labels_of(subsets: list[list[int]], n: int) -> np.ndarray:
    """A class's first subset; a class in none is a cluster of its own."""
    labels = np.full(n, -1)
    for k in reversed(range(len(subsets))):
        labels[subsets[k]] = k
    none = np.flatnonzero(labels < 0)
    labels[none] = len(subsets) + np.arange(len(none))
    return labels


def test_planted_confusion_is_sparse_and_has_the_planted_shape():
    p = planted_confusion(20, 30, seed=1)
    assert sp.issparse(p.counts) and p.counts.shape == (600, 600)
    assert np.bincount(p.groups).tolist() == [30] * 20
    cm = p.counts.tocoo()
    off = cm.row != cm.col
    same = p.groups[cm.row[off]] == p.groups[cm.col[off]]
    # per pair ten times as likely inside: 29 * 10 / (29 * 10 + 570) of the errors stay inside
    share = cm.data[off][same].sum() / cm.data[off].sum()
    assert share == pytest.approx(290 / 860, abs=0.01)
    assert p.counts.nnz < 0.6 * 600 * 600  # most pairs have no count
    assert (cm.data > 0).all() and cm.data.dtype.kind == "i"
    again = planted_confusion(20, 30, seed=1)
    assert (again.counts != p.counts).nnz == 0 and (again.groups == p.groups).all()
    with pytest.raises(ValueError, match="ratio"):
        planted_confusion(2, 3, ratio=0)


@pytest.mark.parametrize("options", [{"max_subset_size": 30}, {"n_clusters": 20}])
def test_scaled_down_planted_groups_are_recovered(options):
    p = planted_confusion(20, 30, seed=0)
    subsets = choose_subsets(p.counts, **options)
    assert adjusted_rand_score(p.groups, labels_of(subsets, 600)) >= 0.95


@pytest.mark.parametrize(
    "options",
    [{}, {"overlap": 1}, {"max_subset_size": 3}, {"max_specialists": 2}, {"n_clusters": 3},
     {"n_clusters": 5, "overlap": 2}, {"n_clusters": 8}, {"min_affinity": 0.08}],
)
def test_sparse_and_dense_give_the_same_subsets(options):
    for cm in (fashion_confusion(), planted_blocks(0)[0], planted_blocks(2)[0]):
        dense = choose_subsets(cm, **options)
        assert choose_subsets(sp.csr_array(cm), **options) == dense
        assert choose_subsets(sp.coo_matrix(cm), **options) == dense  # any scipy.sparse format


def test_sparse_and_dense_agree_on_the_planted_600_classes():
    p = planted_confusion(20, 30, seed=2)
    dense = p.counts.toarray()
    np.testing.assert_allclose(confusion_affinity(p.counts).toarray(), confusion_affinity(dense),
                               rtol=1e-12, atol=0)
    for options in ({"max_subset_size": 30}, {"n_clusters": 20}):
        assert choose_subsets(p.counts, **options) == choose_subsets(dense, **options)
    assert cluster_classes(p.counts, 20) == cluster_classes(dense, 20)


def test_sparse_covariance_matches_dense():
    cov, truth = planted_covariance(0)
    np.testing.assert_allclose(covariance_affinity(sp.csr_array(cov)).toarray(),
                               covariance_affinity(cov), rtol=1e-12, atol=1e-15)
    dense = choose_subsets(cov, kind="covariance")
    assert choose_subsets(sp.csr_array(cov), kind="covariance") == dense
    assert sorted(len(s) for s in dense) == sorted(np.bincount(truth).tolist())


def test_sparse_path_never_builds_a_class_by_class_array(monkeypatch):
    # 5,000 classes: one dense (C, C) float64 array is 200 MB. The whole sparse path must stay
    # far below that (tracemalloc sees numpy's and scipy's allocations).
    p = planted_confusion(10, 500, examples_per_class=150, seed=0)
    c = p.counts.shape[0]

    def spy(cls, name):
        original = getattr(cls, name)

        def refuse(self, *args, **kwargs):
            if self.ndim == 2 and min(self.shape) > 100:
                raise AssertionError(f"{name} of a {self.shape} sparse matrix")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, refuse)

    for cls in (sp.csr_array, sp.coo_array, sp.csc_array):
        spy(cls, "toarray")
        spy(cls, "todense")
    tracemalloc.start()
    try:
        # few examples per class (a small test): the top pair has fewer than the default 10
        subsets = choose_subsets(p.counts, max_subset_size=500, min_pair_count=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.25 * c * c * 8, f"peak {peak / 2**20:.0f} MiB"
    assert adjusted_rand_score(p.groups, labels_of(subsets, c)) >= 0.9


def test_rarely_confused_classes_stay_out_of_sparse_subsets():
    cm, blocks, loners = planted_blocks(1)
    subsets = choose_subsets(sp.csr_array(cm))
    assert sorted(subsets) == sorted(blocks)
    assert not set(loners) & {c for s in subsets for c in s}


@pytest.mark.parametrize(
    ("matrix", "kwargs", "message"),
    [
        (sp.csr_array(np.ones((3, 4))), {}, r"must be a square \(C, C\) matrix, got shape \(3, 4\)"),
        (sp.csr_array(np.array([[5.0, -1.0, 0], [0, 5, 1], [1, 0, 5]])), {},
         r"has a negative count -1.0 at \(0, 1\)"),
        (sp.csr_array(np.array([[5.0, np.nan, 0], [0, 5, 1], [1, 0, 5]])), {},
         r"contains non-finite entries \(NaN or inf\)"),
        (sp.csr_array(np.array([[1.0, 0.5, 0], [0.2, 1, 0], [0, 0, 1]])), {"kind": "covariance"},
         "is not symmetric"),
        (sp.csr_array((0, 0)), {}, "is empty"),
    ],
)
def test_bad_sparse_input_says_what_is_wrong(matrix, kwargs, message):
    with pytest.raises(ValueError, match=message):
        choose_subsets(matrix, **kwargs)


def test_sparse_clustering_is_spectral_only():
    cm = sp.csr_array(fashion_confusion())
    with pytest.raises(ValueError, match="method 'agglomerative' needs a dense"):
        choose_subsets(cm, n_clusters=3, method="agglomerative")
    with pytest.raises(ValueError, match="affinity is not symmetric"):
        class_affinity(sp.csr_array(np.array([[0, 1.0], [0, 0]])), "affinity")
