import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from specialists.affinity import confusion_affinity, covariance_affinity, subset_mass
from specialists.clustering import ClassClusterer, cluster_classes, select_subsets

SIZES = (2, 3, 4, 5, 7, 9)  # 30 classes in 6 groups of varied sizes


def planted_confusion(seed: int, sizes=SIZES) -> tuple[np.ndarray, np.ndarray]:
    """Confusion counts where errors stay inside planted groups, plus random noise counts."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    truth = truth[rng.permutation(len(truth))]  # groups are not contiguous
    c = len(truth)
    counts = np.zeros((c, c))
    for i in range(c):
        same = np.flatnonzero((truth == truth[i]) & (np.arange(c) != i))
        n = int(rng.integers(50, 400))  # class frequency varies 8x
        n_err = int(n * rng.uniform(0.05, 0.4))  # and so does accuracy
        w = rng.uniform(0.5, 1.5, size=len(same))
        counts[i, same] = rng.multinomial(n_err, w / w.sum())
        counts[i] += rng.poisson(0.3, size=c)  # noise: confusions across groups
        counts[i, i] = n - n_err
    return counts, truth


def planted_covariance(seed: int, sizes=SIZES, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Covariance of simulated softmax outputs that spread mass over the true class's group."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    truth = truth[rng.permutation(len(truth))]
    y = rng.integers(0, len(truth), n)
    z = rng.normal(0.0, 1.0, (n, len(truth)))
    z += 3.0 * (truth[None, :] == truth[y][:, None])
    z[np.arange(n), y] += 2.0
    q = np.exp(z - z.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    return np.cov(q, rowvar=False), truth


def labels_of(subsets, n):
    labels = np.full(n, -1)
    for k, s in enumerate(subsets):
        labels[s] = k
    return labels


def assert_partition(subsets, n, k):
    assert len(subsets) == k
    assert all(len(s) > 0 and s == sorted(s) for s in subsets)
    assert sorted(c for s in subsets for c in s) == list(range(n))


@pytest.mark.parametrize("method", ["spectral", "agglomerative", "kmeans"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_confusion_blocks_are_recovered(method, seed):
    counts, truth = planted_confusion(seed)
    subsets = cluster_classes(counts, 6, method=method)
    assert_partition(subsets, 30, 6)
    assert adjusted_rand_score(truth, labels_of(subsets, 30)) == 1.0


@pytest.mark.parametrize("method", ["spectral", "agglomerative", "kmeans"])
@pytest.mark.parametrize("seed", [0, 1])
def test_planted_covariance_blocks_are_recovered(method, seed):
    cov, truth = planted_covariance(seed)
    assert (cov[~np.eye(30, dtype=bool)] < 0).any()  # a real covariance: negative entries occur
    subsets = cluster_classes(cov, 6, method=method, kind="covariance")
    assert_partition(subsets, 30, 6)
    assert adjusted_rand_score(truth, labels_of(subsets, 30)) == 1.0


def test_confusion_affinity_is_the_symmetrised_error_rate():
    counts = np.array([[90.0, 10.0, 0.0], [2.0, 8.0, 6.0], [0.0, 0.0, 5.0]])
    # Rates: class 0 -> 1: 10/100; class 1 -> 0: 2/16, -> 2: 6/16; class 2: none.
    # A rarely wrong class (0) keeps a low affinity even though all its mistakes go to class 1.
    expected = np.array([[0.0, 0.1125, 0.0], [0.1125, 0.0, 0.1875], [0.0, 0.1875, 0.0]])
    np.testing.assert_allclose(confusion_affinity(counts), expected)


def test_covariance_affinity_is_clipped_correlation():
    cov = np.array([[4.0, 2.0, -1.0], [2.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    expected = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(covariance_affinity(cov), expected)


def two_block_counts():
    # Classes {0, 1} confuse each other a lot, {2, 3, 4} a little; one stray count links them.
    return np.array(
        [
            [50, 30, 0, 0, 0],
            [20, 60, 0, 0, 0],
            [0, 0, 90, 5, 5],
            [0, 1, 5, 90, 4],
            [0, 0, 2, 2, 96],
        ],
        dtype=float,
    )


def test_subsets_ordered_by_mass_inside():
    counts = two_block_counts()
    for method in ("spectral", "agglomerative", "kmeans"):
        assert cluster_classes(counts, 2, method=method) == [[0, 1], [2, 3, 4]]
    mass = subset_mass(counts, [[0, 1], [2, 3, 4]])
    # Rates: 30/80 + 20/80 inside {0, 1}; (5+5+5+4+2+2)/100 inside {2, 3, 4}.
    np.testing.assert_allclose(mass, [0.625, 0.23])


def test_degenerate_cluster_counts_give_valid_partitions():
    counts, _ = planted_confusion(0)
    assert cluster_classes(counts, 1) == [list(range(30))]
    singles = cluster_classes(counts, 30)
    assert_partition(singles, 30, 30)
    assert all(len(s) == 1 for s in singles)


@pytest.mark.parametrize("method", ["spectral", "agglomerative", "kmeans"])
def test_disconnected_affinity_still_gives_exactly_n_clusters(method):
    # Two isolated pairs and two classes with no confusion at all: asking for 5 clusters
    # forces a split of a connected pair or of the isolated classes.
    counts = np.diag([10.0] * 6)
    counts[0, 1] = counts[1, 0] = 3
    counts[2, 3] = counts[3, 2] = 3
    for k in (2, 3, 4, 5):
        subsets = cluster_classes(counts, k, method=method)
        assert_partition(subsets, 6, k)
    assert cluster_classes(counts, 4, method=method)[:2] == [[0, 1], [2, 3]]


def test_kmeans_on_duplicate_columns_still_gives_exactly_n_clusters():
    block = np.ones((4, 4)) * 5 + np.eye(4) * 20  # four identical classes
    subsets = cluster_classes(block, 3, method="kmeans")
    assert_partition(subsets, 4, 3)


@pytest.mark.parametrize(
    ("matrix", "kwargs", "message"),
    [
        (np.ones((3, 4)), {}, "square"),
        (np.ones(3), {}, "square"),
        (np.array([[1.0, np.nan], [1.0, 1.0]]), {}, "non-finite"),
        (np.array([[1.0, -1.0], [1.0, 1.0]]), {}, "negative count"),
        (np.array([[1.0, 0.5], [0.2, 1.0]]), {"kind": "covariance"}, "not symmetric"),
        (np.array([[-1.0, 0.0], [0.0, 1.0]]), {"kind": "covariance"}, "negative variance"),
        (np.eye(3) * 5, {}, "no confusion to cluster"),
        (np.ones((3, 3)), {"n_clusters": 0}, "n_clusters is 0"),
        (np.ones((3, 3)), {"n_clusters": 4}, "n_clusters is 4"),
        (np.ones((3, 3)), {"method": "dbscan"}, "unknown method"),
        (np.ones((3, 3)), {"kind": "distance"}, "unknown kind"),
    ],
)
def test_cluster_classes_errors(matrix, kwargs, message):
    kwargs = {"n_clusters": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        cluster_classes(matrix, **kwargs)


def test_class_clusterer_estimator_api():
    counts, truth = planted_confusion(3)
    est = ClassClusterer(6, method="agglomerative")
    assert (est.n_clusters, est.method, est.kind, est.random_state) == (
        6, "agglomerative", "confusion", 0,
    )
    assert not hasattr(est, "subsets_")  # __init__ only stores arguments
    assert est.fit(counts) is est
    assert_partition(est.subsets_, 30, 6)
    for k, s in enumerate(est.subsets_):
        assert (est.labels_[s] == k).all()
    assert est.within_mass_.shape == (6,)
    assert (np.diff(est.within_mass_) <= 0).all()  # most confused first
    assert adjusted_rand_score(truth, est.labels_) == 1.0
    np.testing.assert_array_equal(ClassClusterer(6, method="agglomerative").fit_predict(counts),
                                  est.labels_)


def chain_counts():
    """Six classes: {0, 1, 2} confused, class 3 confused with 2, {4, 5} confused."""
    c = np.eye(6) * 100
    c[0, 1] = c[1, 0] = 20
    c[0, 2] = c[2, 0] = 10
    c[1, 2] = c[2, 1] = 5
    c[2, 3] = c[3, 2] = 8
    c[4, 5] = c[5, 4] = 60
    return c


def test_select_subsets_drops_small_and_ranks_by_mass():
    counts = chain_counts()
    out = select_subsets(counts, [[3], [4, 5], [0, 1, 2]])
    # Mass inside = error rates summed over ordered pairs inside the subset:
    # {0, 1, 2}: 30/130 + 25/125 + 15/123 = 0.553; {4, 5}: 2 * 60/160 = 0.75.
    assert out == [[4, 5], [0, 1, 2]]
    assert select_subsets(counts, [[3], [4, 5], [0, 1, 2]], max_subsets=1) == [[4, 5]]
    assert select_subsets(counts, [[3], [4, 5], [0, 1, 2]], min_size=3) == [[0, 1, 2]]


def test_select_subsets_max_size_keeps_most_confused_classes():
    counts = chain_counts()
    # Inside {0, 1, 2, 3}, class 3 has the least confusion with the rest.
    assert select_subsets(counts, [[3, 2, 1, 0]], max_size=3) == [[0, 1, 2]]
    assert select_subsets(counts, [[3, 2, 1, 0]], max_size=2) == [[0, 1]]


def test_select_subsets_overlap_adds_most_confused_outside_classes():
    counts = chain_counts()
    out = select_subsets(counts, [[0, 1, 2], [4, 5]], overlap=1)
    # Class 3 is the only outside class confused with {0, 1, 2}; nothing is confused
    # with {4, 5}, so it gains nothing.
    assert out == [[4, 5], [0, 1, 2, 3]]
    # A large overlap never covers every class: the dustbin keeps at least one class.
    full = np.ones((4, 4)) + np.eye(4) * 10
    assert select_subsets(full, [[0, 1]], overlap=5) == [[0, 1, 2]]


def test_select_subsets_drops_cover_all_and_repeats():
    counts = chain_counts()
    assert select_subsets(counts, [list(range(6)), [4, 5], [5, 4]]) == [[4, 5]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_size": 1}, "min_size is 1"),
        ({"max_size": 1}, "max_size is 1"),
        ({"max_subsets": 0}, "max_subsets is 0"),
        ({"overlap": -1}, "overlap is -1"),
        ({"subsets": [[0, 9]]}, r"subsets\[0\] contains class 9 but there are only 6 classes"),
        ({"subsets": [[0, 0]]}, "more than once"),
    ],
)
def test_select_subsets_errors(kwargs, message):
    kwargs = {"subsets": [[0, 1]], **kwargs}
    with pytest.raises(ValueError, match=message):
        select_subsets(chain_counts(), **kwargs)
