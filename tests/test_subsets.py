import math

import numpy as np
import pytest
import torch

from specialists.subsets import (
    coverage,
    fold_logits,
    fold_probs,
    specialist_targets,
    validate_subsets,
)


def test_validate_subsets_returns_plain_ints_in_given_order():
    out = validate_subsets([[3, 1], np.array([0, 2, 4]), (torch.tensor(5), 6)], 10)
    assert out == [[3, 1], [0, 2, 4], [5, 6]]
    assert all(type(c) is int for s in out for c in s)


@pytest.mark.parametrize(
    ("subsets", "n_classes", "message"),
    [
        ([], 10, "subsets is empty"),
        ([[0, 1], [2, 12]], 10, r"subsets\[1\] contains class 12 but there are only 10 classes"),
        ([[0, 1, 1]], 10, r"subsets\[0\] contains class 1 more than once"),
        ([[0, 1], [4]], 10, r"subsets\[1\] has 1 class\(es\)"),
        ([[0, -1]], 10, r"subsets\[0\] contains negative class -1"),
        ([[0, 1, 2]], 3, r"subsets\[0\] covers all 3 classes"),
        ([[0, 1.0]], 10, r"subsets\[0\]\[1\] is 1.0"),
        ([[0, True]], 10, r"subsets\[0\]\[1\] is True"),
        ([0, 1], 10, r"subsets\[0\] is int"),
        ("ab", 10, "expected a list of lists"),
        ([[0, 1]], 2, "at least 3 classes"),
    ],
)
def test_validate_subsets_errors(subsets, n_classes, message):
    with pytest.raises(ValueError, match=message):
        validate_subsets(subsets, n_classes)


def test_specialist_targets_maps_subset_positions_and_dustbin():
    labels = torch.tensor([0, 7, 3, 9, 7, 1])
    out = specialist_targets(labels, [7, 3, 9])
    assert out.tolist() == [3, 0, 1, 2, 0, 3]
    assert out.dtype == torch.long


def test_specialist_targets_rejects_bad_labels():
    with pytest.raises(ValueError, match="1-D"):
        specialist_targets(torch.zeros(2, 2, dtype=torch.long), [0, 1])
    with pytest.raises(ValueError, match="integer"):
        specialist_targets(torch.tensor([0.0, 1.0]), [0, 1])
    with pytest.raises(ValueError, match="negative"):
        specialist_targets(torch.tensor([0, -2]), [0, 1])


def test_fold_probs_known_answer():
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    out = fold_probs(probs, [2, 0])
    expected = torch.tensor([[0.3, 0.1, 0.6], [0.25, 0.25, 0.5]])
    torch.testing.assert_close(out, expected)


def test_fold_probs_keeps_tiny_dustbin_digits():
    probs = torch.tensor([[0.5, 0.5 - 2e-12, 1e-12, 1e-12]], dtype=torch.float64)
    out = fold_probs(probs, [0, 1])
    assert out[0, 2].item() == pytest.approx(2e-12, rel=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 20.0])
def test_fold_logits_softmax_equals_folded_softmax(temperature):
    torch.manual_seed(0)
    logits = 5 * torch.randn(7, 9, dtype=torch.float64)
    subset = [4, 1, 7]
    folded = fold_logits(logits, subset, temperature)
    assert folded.shape == (7, 4)
    torch.testing.assert_close(folded[:, :3], logits[:, subset])
    lhs = torch.softmax(folded / temperature, dim=1)
    rhs = fold_probs(torch.softmax(logits / temperature, dim=1), subset)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-14)


def test_fold_logits_rejects_bad_temperature():
    for t in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="temperature"):
            fold_logits(torch.zeros(1, 4), [0, 1], t)


def test_coverage_counts_overlapping_subsets():
    labels = torch.tensor([0, 1, 2, 3, 4, 1])
    out = coverage(labels, [[0, 1], [1, 2], [1, 4]])
    assert out.tolist() == [1, 3, 1, 0, 1, 3]
    with pytest.raises(ValueError, match="non-empty"):
        coverage(labels, [])
