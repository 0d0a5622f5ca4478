"""Evaluation of generalist + specialists: accuracies, conditional accuracy, gains by coverage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from specialists.combine import combine_predictions
from specialists.evaluate import evaluate_specialists, format_coverage_table

# 5 classes; class 1 is covered twice, classes 0 and 2 once, classes 3 and 4 not at all.
SUBSETS = [[0, 1], [1, 2]]
Y = torch.tensor([0, 1, 2, 3, 4, 1])
P_G = torch.tensor(
    [
        [0.40, 0.50, 0.05, 0.05, 0.00],  # y=0: wrong (says 1); restricted to {0,1,2}: still 1
        [0.10, 0.60, 0.10, 0.10, 0.10],  # y=1: right
        [0.10, 0.10, 0.30, 0.50, 0.00],  # y=2: wrong (says 3); restricted: 2, right
        [0.10, 0.10, 0.10, 0.60, 0.10],  # y=3: right, not covered
        [0.50, 0.10, 0.10, 0.10, 0.20],  # y=4: wrong, not covered
        [0.30, 0.20, 0.40, 0.05, 0.05],  # y=1: wrong (says 2); restricted: 2, wrong
    ]
)
COMBINED = torch.tensor(
    [
        [0.60, 0.30, 0.05, 0.05, 0.00],  # right now
        [0.10, 0.60, 0.10, 0.10, 0.10],  # right
        [0.10, 0.10, 0.35, 0.45, 0.00],  # still wrong; restricted: right
        [0.10, 0.10, 0.10, 0.60, 0.10],  # right
        [0.50, 0.10, 0.10, 0.10, 0.20],  # wrong
        [0.20, 0.50, 0.20, 0.05, 0.05],  # right now
    ]
)
UNIFORM = [torch.full((6, 3), 1 / 3), torch.full((6, 3), 1 / 3)]


def fixed_combination(calls: list):
    """A stand-in for combine_predictions that returns COMBINED and records its arguments."""

    def combine(generalist_probs, specialist_probs, subsets, *, top_n):
        calls.append((generalist_probs, specialist_probs, subsets, top_n))
        return COMBINED.clone()

    return combine


def test_known_accuracies_and_conditional_accuracy():
    calls = []
    r = evaluate_specialists(P_G, UNIFORM, SUBSETS, Y, top_n=1, combine=fixed_combination(calls))
    assert calls and calls[0][2] == SUBSETS and calls[0][3] == 1
    assert (r["n"], r["n_specialists"], r["n_covered"]) == (6, 2, 4)
    assert (r["generalist_correct"], r["combined_correct"]) == (2, 4)
    assert r["generalist_acc"] == pytest.approx(1 / 3)
    assert r["combined_acc"] == pytest.approx(2 / 3)
    assert r["relative_gain"] == pytest.approx(1.0)  # 1/3 -> 2/3
    assert r["relative_error_reduction"] == pytest.approx(0.5)  # 2/3 -> 1/3 wrong
    assert r["generalist_conditional_acc"] == pytest.approx(2 / 4)
    assert r["combined_conditional_acc"] == pytest.approx(4 / 4)
    # generalist top-1: 1, 1, 3, 3, 0, 2 -> active specialists 2, 2, 0, 0, 1, 1
    assert r["mean_active"] == pytest.approx(1.0)
    json.dumps(r)  # the result is JSON-able


def test_known_coverage_table():
    r = evaluate_specialists(P_G, UNIFORM, SUBSETS, Y, combine=fixed_combination([]))
    rows = [
        (
            row["label"],
            row["n"],
            row["generalist_correct"],
            row["combined_correct"],
            row["change"],
            row["relative_change"],
        )
        for row in r["by_coverage"]
    ]
    assert rows == [
        ("0", 2, 1, 1, 0, 0.0),
        ("1", 2, 0, 1, 1, None),  # the generalist got none right: no relative change
        ("2", 2, 1, 2, 1, 1.0),
    ]
    grouped = evaluate_specialists(
        P_G, UNIFORM, SUBSETS, Y, combine=fixed_combination([]), max_row=1
    )
    last = grouped["by_coverage"][-1]
    assert len(grouped["by_coverage"]) == 2
    assert (last["label"], last["n"], last["generalist_correct"], last["combined_correct"]) == (
        "1 or more",
        4,
        1,
        3,
    )
    assert last["relative_change"] == pytest.approx(2.0)


def test_format_coverage_table():
    r = evaluate_specialists(P_G, UNIFORM, SUBSETS, Y, combine=fixed_combination([]))
    text = format_coverage_table(r)
    assert "| generalist | 50.0% | 33.3% |" in text
    assert "| + 2 specialists | 100.0% | 66.7% |" in text
    assert "Relative gain in test accuracy: +100.0%; relative error reduction: +50.0%" in text
    assert "| 0 | 2 | 1 | 1 | 0 | 0.0% |" in text
    assert "| 1 | 2 | 0 | 1 | +1 | n/a |" in text
    assert "| 2 | 2 | 1 | 2 | +1 | +100.0% |" in text


def test_all_specialists_active_with_top_n_none():
    calls = []
    r = evaluate_specialists(P_G, UNIFORM, SUBSETS, Y, top_n=None, combine=fixed_combination(calls))
    assert r["mean_active"] == pytest.approx(2.0) and calls[0][3] is None


def test_real_combination_fixes_a_case_the_specialists_know():
    # Example 0: the generalist prefers class 1, both specialists say class 0 (specialist 1 by
    # putting little mass on its classes 1 and 2). Example 1: the generalist's top class (3) is in
    # no subset, so no specialist is active and the generalist's answer stands.
    p_g = torch.tensor([[0.40, 0.50, 0.04, 0.03, 0.03], [0.30, 0.10, 0.05, 0.50, 0.05]])
    p_0 = torch.tensor([[0.90, 0.05, 0.05], [0.05, 0.90, 0.05]])  # classes 0, 1, dustbin
    p_1 = torch.tensor([[0.05, 0.05, 0.90], [0.45, 0.45, 0.10]])  # classes 1, 2, dustbin
    y = torch.tensor([0, 0])
    r = evaluate_specialists(p_g, [p_0, p_1], SUBSETS, y)
    assert (r["generalist_correct"], r["combined_correct"]) == (0, 1)
    assert r["mean_active"] == pytest.approx(1.0)  # 2 active, then 0
    assert r["generalist_conditional_acc"] == pytest.approx(0.5)  # ex. 1: 0 wins within {0,1,2}
    assert r["combined_conditional_acc"] == pytest.approx(1.0)
    combined = combine_predictions(p_g, [p_0, p_1], SUBSETS, top_n=1)
    torch.testing.assert_close(combined[1], p_g[1])


def test_numpy_inputs_work():
    r = evaluate_specialists(
        P_G.numpy(),
        [p.numpy() for p in UNIFORM],
        SUBSETS,
        np.asarray(Y),
        combine=fixed_combination([]),
    )
    assert r["combined_correct"] == 4


@pytest.mark.parametrize(
    "change, match",
    [
        ({"specialist_probs": UNIFORM[:1]}, "got 1 specialist outputs for 2 subsets"),
        (
            {"specialist_probs": [UNIFORM[0], torch.full((6, 4), 0.25)]},
            r"specialist_probs\[1\] has shape \(6, 4\), expected \(6, 3\)",
        ),
        ({"y": torch.tensor([0, 1, 2, 3, 4, 5])}, "only 5 classes"),
        ({"y": Y[:5]}, r"y must be \(N,\)"),
        ({"subsets": [[0, 1], [1, 7]]}, r"subsets\[1\] contains class 7 but there are only 5"),
    ],
)
def test_bad_input_is_named(change, match):
    args = {"specialist_probs": UNIFORM, "subsets": SUBSETS, "y": Y, **change}
    with pytest.raises(ValueError, match=match):
        evaluate_specialists(
            P_G, args["specialist_probs"], args["subsets"], args["y"], combine=fixed_combination([])
        )


def test_combine_of_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"combine returned shape \(6, 4\)"):
        evaluate_specialists(P_G, UNIFORM, SUBSETS, Y, combine=lambda *a, **k: torch.zeros(6, 4))
