"""choose_subsets and check_signal: known answers on planted blocks, a Fashion-MNIST-shaped
confusion and a digits-like matrix with almost no signal."""

import numpy as np
import pytest

from specialists import choose_subsets
from specialists.selection import check_signal

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]
T_SHIRT, TROUSER, PULLOVER, DRESS, COAT, SANDAL, SHIRT, SNEAKER, BAG, BOOT = range(10)

# Off-diagonal counts (true, predicted) of a Fashion-MNIST student on 6,000 validation images
# (600 per class): 805 confusions, T-shirt/top <-> Shirt the most confused pair (96 + 58 = 154),
# then Pullover <-> Coat (135), Pullover <-> Shirt (113), Coat <-> Shirt (95); the shoes confused
# among themselves; Bag and Trouser almost never confused with anything.
FASHION_CONFUSIONS = {
    (0, 1): 2, (0, 2): 9, (0, 3): 22, (0, 4): 2, (0, 5): 1, (0, 6): 96, (0, 8): 6,
    (1, 0): 3, (1, 2): 1, (1, 3): 9, (1, 4): 2, (1, 6): 1, (1, 8): 1,
    (2, 0): 7, (2, 3): 6, (2, 4): 75, (2, 6): 55, (2, 8): 2,
    (3, 0): 22, (3, 1): 4, (3, 2): 4, (3, 4): 18, (3, 6): 12, (3, 8): 2,
    (4, 0): 1, (4, 1): 1, (4, 2): 60, (4, 3): 16, (4, 6): 50, (4, 8): 1,
    (5, 7): 28, (5, 8): 2, (5, 9): 9,
    (6, 0): 58, (6, 1): 1, (6, 2): 58, (6, 3): 14, (6, 4): 45, (6, 8): 4,
    (7, 5): 20, (7, 9): 26,
    (8, 0): 2, (8, 2): 1, (8, 3): 1, (8, 4): 1, (8, 5): 1, (8, 6): 3, (8, 7): 1,
    (9, 5): 6, (9, 7): 32, (9, 8): 1,
}


def fashion_confusion() -> np.ndarray:
    cm = np.zeros((10, 10))
    for (i, j), v in FASHION_CONFUSIONS.items():
        cm[i, j] = v
    np.fill_diagonal(cm, 600 - cm.sum(1))
    return cm


def top_pairs(cm: np.ndarray, k: int) -> list[tuple[int, int]]:
    both = np.triu(cm + cm.T, k=1)
    flat = np.argsort(-both, axis=None, kind="stable")[:k]
    return [tuple(int(i) for i in np.unravel_index(f, both.shape)) for f in flat]


def test_fashion_matrix_is_what_it_claims():
    cm = fashion_confusion()
    assert cm.sum() == 6000 and cm.sum() - np.trace(cm) == 805
    assert top_pairs(cm, 3) == [(T_SHIRT, SHIRT), (PULLOVER, COAT), (PULLOVER, SHIRT)]
    assert cm[T_SHIRT, SHIRT] + cm[SHIRT, T_SHIRT] == 154


def test_fashion_default_known_answer():
    assert choose_subsets(fashion_confusion()) == [
        [T_SHIRT, PULLOVER, DRESS, COAT, SHIRT], [SANDAL, SNEAKER, BOOT]]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"overlap": 1},
        {"max_subset_size": 3},
        {"max_specialists": 2},
        {"n_clusters": 3},
        {"n_clusters": 3, "method": "agglomerative"},
        {"n_clusters": 3, "method": "kmeans"},
        {"n_clusters": 5, "overlap": 2},
        {"n_clusters": 8},
    ],
)
def test_fashion_rules_hold_for_every_option(options):
    cm = fashion_confusion()
    subsets = choose_subsets(cm, **options)
    # the three most confused pairs each share a subset
    for a, b in top_pairs(cm, 3):
        assert any(a in s and b in s for s in subsets), (a, b, subsets)
    # Bag and Trouser are almost never confused: no specialist covers them
    assert all(BAG not in s and TROUSER not in s for s in subsets)
    assert all(len(s) >= 2 and s == sorted(s) and len(s) < 10 for s in subsets)
    if "max_specialists" in options:
        assert len(subsets) <= options["max_specialists"]


def planted_blocks(seed: int) -> tuple[np.ndarray, list[list[int]], list[int]]:
    """12 classes, 500 examples each: blocks whose members send 5-15% of their examples to each
    block-mate, three classes that are 99.5% right, and Poisson noise everywhere."""
    rng = np.random.default_rng(seed)
    blocks, rates = [[0, 4, 8], [1, 5, 9, 11], [2, 6]], [0.10, 0.05, 0.15]
    loners = [3, 7, 10]
    cm = rng.poisson(0.5, size=(12, 12)).astype(float)
    for block, rate in zip(blocks, rates, strict=True):
        for i in block:
            for j in block:
                if i != j:
                    cm[i, j] = rng.binomial(500, rate)
    np.fill_diagonal(cm, 0.0)
    np.fill_diagonal(cm, 500 - cm.sum(1))
    return cm, blocks, loners


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n_clusters", [None, 3])
def test_planted_blocks_are_the_subsets_and_loners_stay_out(seed, n_clusters):
    cm, blocks, loners = planted_blocks(seed)
    subsets = choose_subsets(cm, n_clusters=n_clusters)
    assert sorted(subsets) == sorted(blocks)
    assert not set(loners) & {c for s in subsets for c in s}


def test_overlap_adds_confused_neighbours_only():
    cm, blocks, _ = planted_blocks(0)
    # no class outside a block is confused with it beyond noise: nothing to add
    assert sorted(choose_subsets(cm, overlap=2)) == sorted(blocks)
    # Fashion, 4 agglomerative clusters: Dress and Sandal are left alone (singletons are
    # dropped); with overlap each subset gains its most confused neighbour, never Bag or Trouser
    fashion = fashion_confusion()
    base = choose_subsets(fashion, n_clusters=4, method="agglomerative")
    assert base == [[T_SHIRT, PULLOVER, COAT, SHIRT], [SNEAKER, BOOT]]
    more = choose_subsets(fashion, n_clusters=4, method="agglomerative", overlap=1)
    assert more == [[T_SHIRT, PULLOVER, DRESS, COAT, SHIRT], [SANDAL, SNEAKER, BOOT]]


def test_strong_pairs_are_joined_even_past_max_subset_size():
    cm, _, _ = planted_blocks(0)
    # {0, 4, 8}: every pair strongly confused; a size limit of 2 splits it, the rule rejoins it
    subsets = choose_subsets(cm, max_subset_size=2)
    assert [0, 4, 8] in subsets
    # pairs below the strong threshold do not force anything: {1, 5, 9, 11} is trimmed to 2
    weak = [s for s in subsets if set(s) <= {1, 5, 9, 11}]
    assert weak and all(len(s) == 2 for s in weak)


def test_min_affinity_decides_what_rarely_confused_means():
    cm = fashion_confusion()
    # Trouser's strongest pair (Dress, 13 confusions) is 13/154 = 0.084 of the top pair's rate
    loose = choose_subsets(cm, min_affinity=0.08)
    assert any(TROUSER in s for s in loose) and all(BAG not in s for s in loose)
    strict = choose_subsets(cm, min_affinity=0.5)  # only pairs near the top one
    assert strict == [[T_SHIRT, PULLOVER, COAT, SHIRT]]


def test_covariance_signal_finds_the_same_blocks():
    rng = np.random.default_rng(0)
    groups = [[0, 1, 2], [3, 4], [5, 6, 7]]
    truth = np.zeros(8, dtype=int)
    for g, members in enumerate(groups):
        truth[members] = g
    y = rng.integers(0, 8, 4000)
    z = rng.normal(0.0, 1.0, (4000, 8)) + 3.0 * (truth[None, :] == truth[y][:, None])
    z[np.arange(4000), y] += 2.0
    q = np.exp(z - z.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    subsets = choose_subsets(np.cov(q, rowvar=False), kind="covariance")
    assert sorted(subsets) == groups


# ---- too little signal ----


def digits_like() -> np.ndarray:
    """135 validation images of 10 digits, one confusion (a 3 read as an 8)."""
    cm = np.diag([14.0, 13, 14, 13, 14, 13, 14, 13, 14, 13])
    cm[3, 3] -= 1
    cm[3, 8] = 1
    return cm


def test_almost_no_signal_gives_no_subsets_and_says_why():
    cm = digits_like()
    assert cm.sum() == 135
    assert choose_subsets(cm) == []
    assert choose_subsets(cm, n_clusters=3, overlap=2) == []
    check = check_signal(cm)
    assert check.too_weak and check.top_pair == (3, 8) and check.top_pair_count == 1
    assert (check.n_examples, check.n_confusions) == (135, 1)
    assert check.reason == (
        "too little confusion to choose specialist subsets: the most confused pair (3 <-> 8) "
        "has 1 confusion(s) among 135 examples (1 in all); at least 10 are needed")


def test_signal_rule_boundary_and_names():
    cm = fashion_confusion()
    check = check_signal(cm, class_names=FASHION)
    assert not check.too_weak and check.top_pair == (T_SHIRT, SHIRT)
    assert "T-shirt/top <-> Shirt" in check.reason and "154" in check.reason
    assert check_signal(cm, min_pair_count=154).too_weak is False  # exactly enough
    assert check_signal(cm, min_pair_count=155).too_weak is True
    assert choose_subsets(cm, min_pair_count=155) == []
    perfect = check_signal(np.eye(4) * 7)
    assert perfect.too_weak and perfect.top_pair is None and "no confusion" in perfect.reason


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "affinity"}, "kind must be 'confusion' or 'covariance'"),
        ({"kind": "distance"}, "unknown kind"),
        ({"method": "dbscan"}, "unknown method"),
        ({"overlap": -1}, "overlap is -1"),
        ({"n_clusters": 0}, "n_clusters is 0"),
        ({"max_specialists": 0}, "max_specialists is 0"),
        ({"max_subset_size": 1}, "max_subset_size is 1"),
        ({"min_affinity": 0.0}, "min_affinity must be a number in"),
        ({"strong_affinity": 1.5}, "strong_affinity must be a number in"),
        ({"min_affinity": 0.6, "strong_affinity": 0.5}, "must be >= min_affinity"),
        ({"min_pair_count": 0}, "min_pair_count must be a number > 0"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        choose_subsets(fashion_confusion(), **options)


def test_bad_matrix():
    with pytest.raises(ValueError, match="square"):
        choose_subsets(np.ones((3, 4)))
    with pytest.raises(ValueError, match="negative count"):
        choose_subsets(-np.ones((3, 3)))
