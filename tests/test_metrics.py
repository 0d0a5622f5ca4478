"""Known answers for the metrics on hand-made inputs."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ensemble_kd.metrics import (
    accuracy,
    disagreement,
    evaluate,
    expected_calibration_error,
    format_table,
    nll,
    paired_bootstrap,
    per_class_accuracy,
    top_k_accuracy,
)

# Four examples, three classes, no ties; argmax = [0, 1, 2, 0].
PROBS = torch.tensor(
    [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.5, 0.1, 0.4]], dtype=torch.float32
)


def test_accuracy_on_probs_logits_predictions_and_numpy():
    y = torch.tensor([0, 1, 0, 1])
    assert accuracy(PROBS, y) == pytest.approx(0.5)
    assert accuracy(PROBS.log() * 3.0, y) == pytest.approx(0.5)  # logits: same argmax
    assert accuracy(torch.tensor([0, 1, 2, 0]), y) == pytest.approx(0.5)
    assert accuracy(PROBS.numpy(), y.numpy()) == pytest.approx(0.5)
    assert isinstance(accuracy(PROBS, y), float)


def test_top_k_accuracy_counts_label_among_k_best_and_clips_k():
    y = torch.tensor([1, 0, 0, 1])
    assert top_k_accuracy(PROBS, y, k=1) == pytest.approx(0.0)
    # top-2 sets: {0,1} {1,2} {2,1} {0,2}: only the first holds its label.
    assert top_k_accuracy(PROBS, y, k=2) == pytest.approx(0.25)
    assert top_k_accuracy(PROBS, y, k=3) == pytest.approx(1.0)
    assert top_k_accuracy(PROBS, y) == pytest.approx(1.0)  # k=5 clipped to C=3
    with pytest.raises(ValueError, match="k must be at least 1"):
        top_k_accuracy(PROBS, y, k=0)


def test_nll_is_mean_negative_log_of_label_probability_with_clamp():
    probs = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    expected = -(math.log(0.5) + math.log(0.75)) / 2
    assert nll(probs, torch.tensor([0, 1])) == pytest.approx(expected, rel=1e-6)
    # A zero probability on the label costs -log(1e-12), not infinity.
    zero = torch.tensor([[1.0, 0.0]])
    assert nll(zero, torch.tensor([1])) == pytest.approx(-math.log(1e-12), rel=1e-6)


def test_ece_known_answer_by_hand():
    # confidences .95 (right), .95 (wrong), .65 (right), .55 (right); 10 bins:
    # (.9,1]: 2/4 * |.5 - .95| = .225; (.6,.7]: 1/4 * .35; (.5,.6]: 1/4 * .45 -> .425
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.35, 0.65], [0.55, 0.45]])
    y = torch.tensor([0, 1, 1, 0])
    assert expected_calibration_error(probs, y, n_bins=10) == pytest.approx(0.425, abs=1e-6)
    # One bin: |accuracy - mean confidence| = |.75 - .775|.
    assert expected_calibration_error(probs, y, n_bins=1) == pytest.approx(0.025, abs=1e-6)


def test_ece_is_zero_when_confidence_matches_accuracy():
    probs = torch.tensor([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.0)


def test_ece_matches_a_direct_loop_over_bins():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(500, 7, generator=g) * 2, dim=1)
    y = torch.randint(0, 7, (500,), generator=g)
    conf, pred = probs.double().max(1)
    expected = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        m = (conf > lo) & (conf <= hi)
        if m.any():
            acc_b = (pred[m] == y[m]).double().mean()
            expected += m.sum().item() / 500 * abs(acc_b - conf[m].mean()).item()
    assert expected_calibration_error(probs, y) == pytest.approx(expected, abs=1e-9)


def test_per_class_accuracy_with_nan_for_absent_class():
    pred = torch.tensor([0, 1, 1, 2, 0])
    y = torch.tensor([0, 1, 2, 2, 0])
    got = per_class_accuracy(pred, y, n_classes=4)
    assert got[:3] == pytest.approx([1.0, 1.0, 0.5])
    assert math.isnan(got[3])
    # Probabilities give the same answer through their argmax.
    onehot = torch.nn.functional.one_hot(pred, 4).float()
    assert per_class_accuracy(onehot, y, 4)[:3] == pytest.approx([1.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="3 columns but n_classes is 4"):
        per_class_accuracy(onehot[:, :3], y, 4)


def test_evaluate_collects_all_metrics():
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.35, 0.65], [0.55, 0.45]])
    y = torch.tensor([0, 1, 1, 0])
    out = evaluate(probs, y)
    assert set(out) == {"accuracy", "error", "top5", "nll", "ece", "n"}
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["error"] == pytest.approx(0.25)
    assert out["top5"] == pytest.approx(1.0)
    expected_nll = -(math.log(0.95) + math.log(0.05) + math.log(0.65) + math.log(0.55)) / 4
    assert out["nll"] == pytest.approx(expected_nll, rel=1e-5)
    assert out["ece"] == pytest.approx(expected_calibration_error(probs, y))
    assert out["n"] == 4 and isinstance(out["n"], int)


def _members(preds: list[list[int]], n_classes: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(preds), n_classes).float()  # (K, N, C)


def test_disagreement_known_answer():
    # pairs: (0,1) differ on 1/4, (0,2) on 3/4, (1,2) on 2/4 -> mean 0.5
    member_probs = _members([[0, 1, 2, 0], [0, 1, 2, 1], [1, 1, 0, 1]])
    assert disagreement(member_probs) == pytest.approx(0.5)
    assert disagreement(member_probs[:1]) == 0.0
    assert disagreement(member_probs[[0, 0]]) == 0.0


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(2, 5),
    n=st.integers(1, 12),
    c=st.integers(1, 4),
    seed=st.integers(0, 10_000),
)
def test_disagreement_equals_brute_force_over_pairs(k, n, c, seed):
    preds = np.random.default_rng(seed).integers(0, c, size=(k, n))
    pairs = list(itertools.combinations(range(k), 2))
    expected = np.mean([np.mean(preds[i] != preds[j]) for i, j in pairs])
    assert disagreement(_members(preds.tolist(), c)) == pytest.approx(expected)


def test_format_table_exact_layout():
    rows = [
        {"method": "teacher", "acc": 0.91234, "n": 100},
        {"method": "a|b", "acc": float("nan")},
    ]
    expected = (
        "Results\n"
        "\n"
        "| method  |    acc |   n |\n"
        "|---------|-------:|----:|\n"
        "| teacher | 0.9123 | 100 |\n"
        "| a\\|b    |    nan |     |"
    )
    assert format_table(rows, ["method", "acc", "n"], title="Results") == expected


def test_format_table_floatfmt_and_header_only():
    table = format_table([{"x": 0.5, "flag": True}], ["x", "flag"], floatfmt=".1%")
    assert table.splitlines() == ["|     x | flag |", "|------:|------|", "| 50.0% | True |"]
    assert format_table([], ["a"]).splitlines() == ["| a   |", "|-----|"]


def test_format_table_errors():
    with pytest.raises(ValueError, match="at least one column"):
        format_table([{"a": 1}], [])
    with pytest.raises(ValueError, match=r"rows\[0\] must be a dict"):
        format_table([[1]], ["a"])
    with pytest.raises(ValueError, match="floatfmt"):
        format_table([{"a": 1.0}], ["a"], floatfmt="zz")


def test_shape_and_label_errors_name_the_problem():
    y = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="y has 3 labels but there are 4 predictions"):
        accuracy(PROBS, y[:3])
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        accuracy(PROBS, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="integer labels"):
        nll(PROBS, y.float())
    with pytest.raises(ValueError, match=r"must be 2-D \(N, C\)"):
        nll(PROBS[0], y[:1])
    with pytest.raises(ValueError, match="rows must sum to 1"):
        nll(PROBS * 0.5, y)  # not normalised
    with pytest.raises(ValueError, match="probabilities in"):
        expected_calibration_error(PROBS.log(), y)  # logits passed by mistake
    with pytest.raises(ValueError, match="empty"):
        evaluate(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(K, N, C\)"):
        disagreement(PROBS)


# ------------------------------------------------------------------------- paired bootstrap


def test_bootstrap_interval_covers_the_true_mean_about_as_often_as_it_claims():
    rng = np.random.default_rng(0)
    hits = 0
    for trial in range(60):
        x = (rng.random(200) < 0.7).astype(float)[:, None]  # (N, 1) Bernoulli(0.7)
        r = paired_bootstrap(x, lambda m: m[0], n_resamples=400, seed=trial)
        hits += r["low"] <= 0.7 <= r["high"]
    assert 50 <= hits <= 60  # about 95% of 60


def test_bootstrap_interval_shrinks_like_one_over_root_n():
    rng = np.random.default_rng(1)
    widths = {}
    for n in (250, 4000):
        x = (rng.random(n) < 0.5).astype(float)[:, None]
        r = paired_bootstrap(x, lambda m: m[0], n_resamples=500, seed=0)
        widths[n] = r["high"] - r["low"]
    assert 0.15 < widths[4000] / widths[250] < 0.4  # sqrt(250 / 4000) = 0.25


def test_pairing_narrows_the_interval_of_a_difference():
    rng = np.random.default_rng(2)
    a = (rng.random(1000) < 0.8).astype(float)
    b = a.copy()
    flip = rng.choice(1000, 30, replace=False)  # b differs from a on 30 examples only
    b[flip] = 1 - b[flip]
    paired = paired_bootstrap(np.stack([a, b], 1), lambda m: m[1] - m[0], n_resamples=500)
    unpaired = paired_bootstrap(np.stack([a, rng.permutation(b)], 1), lambda m: m[1] - m[0],
                                n_resamples=500)
    assert paired["estimate"] == pytest.approx(b.mean() - a.mean())
    assert paired["high"] - paired["low"] < 0.5 * (unpaired["high"] - unpaired["low"])


def test_bootstrap_counts_undefined_resamples_and_checks_its_input():
    x = np.array([[1.0, 1.0], [0.0, 0.0]])  # ratio m0 / (m1 - m0) is 0/0 in every resample
    r = paired_bootstrap(x, lambda m: m[0] / (m[1] - m[0]), n_resamples=50)
    assert r["estimate"] is None and r["low"] is None and r["n_undefined"] == 50
    assert paired_bootstrap(x, lambda m: m[0], n_resamples=10, seed=3) == paired_bootstrap(
        x, lambda m: m[0], n_resamples=10, seed=3)
    with pytest.raises(ValueError, match="columns"):
        paired_bootstrap(np.zeros((0, 2)), lambda m: m[0])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(x, lambda m: m[0], confidence=1.0)
