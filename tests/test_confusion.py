"""Known answers for the confusion functions and for analyse() on planted confusion blocks."""

import json

import numpy as np
import pytest
import torch

from ensemble_kd.io import FormatError
from specialists.affinity import confusion_affinity, confusion_rates, prediction_covariance
from specialists.confusion import ConfusionAnalysis, analyse, default_n_clusters
from specialists.counts import cluster_mass, confusion_matrix, most_confused_pairs
from specialists.predictions import load_predictions, save_predictions

# Hand-made labels: 4 classes, class 3 never occurs.
Y_TRUE = [0, 0, 1, 2, 2, 2]
Y_PRED = [0, 1, 1, 2, 0, 2]
CM = np.array([[1, 1, 0, 0],
               [0, 1, 0, 0],
               [1, 0, 2, 0],
               [0, 0, 0, 0]])


def planted(blocks, n_per=20, n_wrong=2):
    """Probabilities whose only confusions are inside blocks.

    Each class gets ``n_per`` examples; ``n_wrong`` of them are predicted as each
    other member of its block. Predictions put 0.6 on the predicted class and
    spread 0.4 over the rest of the true block, so predictions covary within blocks.
    """
    c = sum(len(b) for b in blocks)
    probs, labels = [], []
    for b in blocks:
        for i in b:
            preds = [i] * (n_per - n_wrong * (len(b) - 1))
            preds += [j for j in b if j != i for _ in range(n_wrong)]
            for p in preds:
                row = np.zeros(c)
                others = [j for j in b if j != p]
                row[others] = 0.4 / len(others)
                row[p] = 0.6
                probs.append(row)
                labels.append(i)
    return np.array(probs), np.array(labels)


# ---------------------------------------------------------------------------
# confusion_matrix


def test_confusion_matrix_known_answer_with_absent_class():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 4)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, CM)


def test_confusion_matrix_accepts_tensors_and_empty_input():
    cm = confusion_matrix(torch.tensor(Y_TRUE), torch.tensor(Y_PRED), 4)
    np.testing.assert_array_equal(cm, CM)
    np.testing.assert_array_equal(confusion_matrix([], [], 3), np.zeros((3, 3), dtype=np.int64))


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        ([0, 1, 2], [0, 1], "y_true has 3 labels but y_pred has 2"),
        ([0, 4, 1], [0, 1, 1], r"y_true\[1\] is class 4 but there are only 4 classes"),
        ([0, 1, 1], [0, 1, 9], r"y_pred\[2\] is class 9 but there are only 4 classes"),
        ([0, -1, 1], [0, 1, 1], r"y_true\[1\] is -1"),
        ([[0, 1]], [[0, 1]], "must be 1-D"),
        ([0.5, 1.0], [0, 1], "integer class indices"),
    ],
)
def test_confusion_matrix_bad_input(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(y_true, y_pred, 4)


# ---------------------------------------------------------------------------
# confusion_rates, confusion_affinity


def test_confusion_rates_known_answer_empty_row_stays_zero():
    r = confusion_rates(CM)
    expected = np.array([[0.5, 0.5, 0, 0], [0, 1, 0, 0], [1 / 3, 0, 2 / 3, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(r, expected)


def test_confusion_rates_rejects_bad_matrices():
    with pytest.raises(ValueError, match="square"):
        confusion_rates(np.ones((2, 3)))
    with pytest.raises(ValueError, match="negative"):
        confusion_rates(np.array([[1, -1], [0, 1]]))


def test_confusion_affinity_known_answer():
    s = confusion_affinity(CM)
    assert s[0, 1] == pytest.approx(0.25)  # (0.5 + 0) / 2
    assert s[0, 2] == pytest.approx(1 / 6)  # (0 + 1/3) / 2
    assert s[1, 2] == 0.0
    np.testing.assert_array_equal(np.diag(s), 0.0)
    np.testing.assert_allclose(s, s.T)


# ---------------------------------------------------------------------------
# most_confused_pairs

PAIRS_CM = np.array([[5, 3, 1],
                     [2, 4, 3],
                     [0, 3, 6]])  # 9 examples per class


def test_most_confused_pairs_directed_sorted_with_index_ties():
    pairs = most_confused_pairs(PAIRS_CM, top=None)
    got = [(p["true"], p["predicted"], p["count"]) for p in pairs]
    assert got == [(0, 1, 3), (1, 2, 3), (2, 1, 3), (1, 0, 2), (0, 2, 1)]
    assert pairs[0]["rate"] == pytest.approx(3 / 9)
    assert pairs[-1]["rate"] == pytest.approx(1 / 9)
    assert [(p["true"], p["predicted"]) for p in most_confused_pairs(PAIRS_CM, top=2)] == [
        (0, 1), (1, 2)]


def test_most_confused_pairs_symmetric_merges_directions():
    pairs = most_confused_pairs(PAIRS_CM, top=10, symmetric=True)
    assert [(p["a"], p["b"], p["count"]) for p in pairs] == [(1, 2, 6), (0, 1, 5), (0, 2, 1)]
    assert pairs[0]["rate"] == pytest.approx(6 / 18)  # share of classes 1 and 2's examples
    assert all(p["a"] < p["b"] for p in pairs)


def test_most_confused_pairs_none_for_perfect_model_and_bad_top():
    assert most_confused_pairs(np.diag([3, 4])) == []
    with pytest.raises(ValueError, match="top"):
        most_confused_pairs(PAIRS_CM, top=-1)


# ---------------------------------------------------------------------------
# prediction_covariance, cluster_mass, default_n_clusters


def test_prediction_covariance_known_answer():
    cov = prediction_covariance(np.array([[1.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(cov, [[0.5, -0.5], [-0.5, 0.5]])
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=50)
    np.testing.assert_allclose(prediction_covariance(probs), np.cov(probs, rowvar=False))
    with pytest.raises(ValueError, match="at least 2 examples"):
        prediction_covariance(np.array([[0.5, 0.5]]))


def test_cluster_mass_counts_off_diagonal_inside_each_cluster():
    assert cluster_mass(PAIRS_CM, [[1, 2], [0]]) == [6.0, 0.0]
    assert cluster_mass(PAIRS_CM, [[0, 1, 2]]) == [12.0]
    with pytest.raises(ValueError, match=r"clusters\[1\] contains class 5 but there are only 3"):
        cluster_mass(PAIRS_CM, [[0], [5]])


@pytest.mark.parametrize(("c", "k"), [(1, 1), (2, 1), (3, 2), (4, 2), (10, 3), (30, 5),
                                      (100, 10)])
def test_default_n_clusters(c, k):
    assert default_n_clusters(c) == k


# ---------------------------------------------------------------------------
# analyse

BLOCKS = [[0, 4, 8], [1, 3, 5], [2, 6, 7]]


def _as_sets(clusters):
    return {frozenset(s) for s in clusters}


@pytest.mark.parametrize(("method", "kind"), [("spectral", "confusion"),
                                              ("agglomerative", "confusion"),
                                              ("spectral", "covariance")])
def test_analyse_recovers_planted_blocks(method, kind):
    probs, y = planted(BLOCKS)
    a = analyse(probs, y, method=method, kind=kind)  # default n_clusters for C=9 is 3
    assert _as_sets(a.clusters) == _as_sets(BLOCKS)
    assert all(s == sorted(s) for s in a.clusters)
    # Each class of 3 sends 2 examples to each of 2 block-mates: 3 * 2 * 2 = 12 per block.
    assert a.cluster_mass == [12.0, 12.0, 12.0]
    assert a.method == method


def test_analyse_numbers_on_planted_blocks():
    probs, y = planted(BLOCKS)
    names = [f"c{i}" for i in range(9)]
    a = analyse(probs, y, class_names=names, top=3)
    assert a.n == 180
    assert a.accuracy == pytest.approx(16 / 20)
    np.testing.assert_allclose(a.per_class_accuracy, 0.8)
    assert a.counts[0, 4] == 2 and a.counts[0, 1] == 0 and a.counts[0, 0] == 16
    np.testing.assert_allclose(a.normalised.sum(axis=1), 1.0)
    assert [(p["true"], p["predicted"], p["count"]) for p in a.pairs] == [
        (0, 4, 2), (0, 8, 2), (1, 3, 2)]
    assert [(p["a"], p["b"], p["count"]) for p in a.pairs_symmetric] == [
        (0, 4, 4), (0, 8, 4), (1, 3, 4)]
    assert a.covariance.shape == (9, 9)
    assert a.class_names == names
    # 4 confusions in the top pair: below the default signal rule (10), and the notes say so
    assert a.notes == ["Too little confusion to choose specialist subsets: the most confused "
                       "pair (c0 <-> c4) has 4 confusion(s) among 180 examples (36 in all); at "
                       "least 10 are needed: no specialist is trained on these clusters."]
    assert analyse(probs, y, class_names=names, min_pair_count=4).notes == []


def test_analyse_averages_an_ensemble_stack():
    probs, y = planted(BLOCKS)
    flipped = np.roll(probs, 1, axis=1)  # a second member that disagrees
    stack = np.stack([probs, probs, flipped])  # (K, N, C)
    a = analyse(stack, y, n_clusters=3)
    b = analyse(stack.mean(axis=0), y, n_clusters=3)
    np.testing.assert_array_equal(a.counts, b.counts)


def test_analyse_perfect_model_gives_singletons_and_says_so():
    y = np.repeat(np.arange(5), 4)
    a = analyse(np.eye(5)[y], y)
    assert a.clusters == [[0], [1], [2], [3], [4]]
    assert a.cluster_mass == [0.0] * 5
    assert a.accuracy == 1.0 and a.pairs == [] and a.pairs_symmetric == []
    assert any("no mistake" in note for note in a.notes)


def test_analyse_absent_class_has_nan_accuracy_and_a_note():
    probs, y = planted(BLOCKS)
    keep = y != 4
    a = analyse(probs[keep], y[keep], n_clusters=9)
    assert np.isnan(a.per_class_accuracy[4])
    assert a.clusters == [[i] for i in range(9)]
    assert any("no example" in note for note in a.notes)
    assert a.to_dict()["per_class_accuracy"][4] is None


def test_to_dict_is_json_ready_and_round_trips():
    probs, y = planted(BLOCKS)
    a = analyse(probs, y, class_names=[f"c{i}" for i in range(9)])
    d = a.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert isinstance(d["counts"], list) and d["counts"][0][0] == 16
    b = ConfusionAnalysis.from_dict(json.loads(json.dumps(d)))
    np.testing.assert_array_equal(b.counts, a.counts)
    np.testing.assert_allclose(b.covariance, a.covariance)
    assert b.clusters == a.clusters and b.pairs == a.pairs and b.class_names == a.class_names
    with pytest.raises(ValueError, match="'counts'"):
        ConfusionAnalysis.from_dict({k: v for k, v in d.items() if k != "counts"})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"y": [0, 1]}, "probs has 4 rows but y has 2 labels"),
        ({"y": [0, 1, 2, 3]}, r"y\[3\] is class 3 but there are only 3 classes"),
        ({"probs": np.array([[2.0, 0, 0]] * 4)}, "sum to 1 but row 0 sums to 2"),
        ({"probs": np.array([[-1.0, 1.0, 1.0]] * 4)}, "negative"),
        ({"probs": np.ones(3) / 3}, "must be"),
        ({"class_names": ["a", "b"]}, "class_names has 2 names but there are 3 classes"),
        ({"class_names": ["a", "b", "a"]}, "unique"),
        ({"n_clusters": 4}, r"n_clusters must be an int in \[1, 3\]"),
        ({"kind": "nope"}, "kind"),
    ],
)
def test_analyse_bad_input(kwargs, match):
    args = {"probs": np.eye(3)[[0, 1, 2, 0]], "y": [0, 1, 2, 0]} | kwargs
    probs, y = args.pop("probs"), args.pop("y")
    with pytest.raises(ValueError, match=match):
        analyse(probs, y, **args)


# ---------------------------------------------------------------------------
# saved predictions


def test_save_load_predictions_round_trip(tmp_path):
    probs, y = planted(BLOCKS)
    names = [f"class {i}" for i in range(9)]
    path = tmp_path / "preds.npz"
    save_predictions(path, probs, y, names)
    p2, y2, n2 = load_predictions(path)
    np.testing.assert_allclose(p2, probs, atol=1e-7)
    np.testing.assert_array_equal(y2, y)
    assert n2 == names
    assert [f.name for f in tmp_path.iterdir()] == ["preds.npz"]  # no temporary left behind
    save_predictions(tmp_path / "plain.npz", torch.tensor(probs), torch.tensor(y))
    assert load_predictions(tmp_path / "plain.npz")[2] is None


def test_load_predictions_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_predictions(tmp_path / "missing.npz")
    np.savez(tmp_path / "nolabels.npz", probs=np.eye(2))
    with pytest.raises(FormatError, match="missing"):
        load_predictions(tmp_path / "nolabels.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(FormatError):
        load_predictions(tmp_path / "text.npz")
    # An object array would need pickle to load: refused, not executed.
    np.savez(tmp_path / "pickled.npz", probs=np.eye(2), labels=np.array([0, 1], dtype=object))
    with pytest.raises(FormatError):
        load_predictions(tmp_path / "pickled.npz")
    np.savez(tmp_path / "outofrange.npz", probs=np.eye(2), labels=np.array([0, 5]))
    with pytest.raises(FormatError, match="only 2 classes"):
        load_predictions(tmp_path / "outofrange.npz")


def test_save_predictions_bad_input(tmp_path):
    with pytest.raises(ValueError, match="probs has 2 rows but labels has 3"):
        save_predictions(tmp_path / "p.npz", np.eye(2), [0, 1, 1])
    assert not (tmp_path / "p.npz").exists()


def test_analysis_affinity_is_the_one_its_clusters_were_built_from():
    from specialists.affinity import covariance_affinity

    probs, y = planted(BLOCKS)
    a = analyse(probs, y)
    np.testing.assert_array_equal(a.affinity, confusion_affinity(a.counts))
    b = analyse(probs, y, kind="covariance")
    assert b.kind == "covariance"
    np.testing.assert_array_equal(b.affinity, covariance_affinity(b.covariance))
    back = ConfusionAnalysis.from_dict(json.loads(json.dumps(b.to_dict())))
    assert back.kind == "covariance"
    old = a.to_dict()
    del old["kind"]  # a report.json written before the kind was recorded
    assert ConfusionAnalysis.from_dict(old).kind == "confusion"
