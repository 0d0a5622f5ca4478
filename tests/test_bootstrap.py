"""Known answers for ``metrics.paired_bootstrap_ci``: a closed form, coverage, groups, rows."""

import math

import numpy as np
import pytest
import torch

from ensemble_kd.metrics import paired_bootstrap_ci


def _mean_diff(a, b):
    return float((a - b).mean())


def test_interval_of_a_paired_mean_difference_matches_the_normal_closed_form():
    rng = np.random.default_rng(0)
    n = 4000
    a = rng.normal(0.0, 1.0, n)
    b = 0.8 * a + rng.normal(-0.1, 0.5, n)  # paired: strongly correlated with a
    d = a - b
    half = 1.959964 * d.std(ddof=1) / math.sqrt(n)  # the CLT interval of mean(d)
    ci = paired_bootstrap_ci(_mean_diff, [a, b], n_boot=3000, seed=1)
    assert ci.estimate == pytest.approx(d.mean())
    assert ci.low == pytest.approx(d.mean() - half, abs=0.08 * half)
    assert ci.high == pytest.approx(d.mean() + half, abs=0.08 * half)
    # unpaired intervals would be far wider: the pairing is what makes the interval narrow
    assert ci.high - ci.low < 0.5 * 2 * 1.96 * math.sqrt((a.var() + b.var()) / n)
    assert (ci.n_boot, ci.n_valid, ci.level) == (3000, 3000, 0.95)


def test_coverage_on_synthetic_data_is_near_the_nominal_level():
    rng = np.random.default_rng(2)
    hits, trials = 0, 200
    for t in range(trials):
        x = rng.exponential(1.0, 80)  # skewed; true mean 1
        ci = paired_bootstrap_ci(lambda v: float(v.mean()), [x], n_boot=400, seed=t)
        hits += ci.low <= 1.0 <= ci.high
    assert 0.88 <= hits / trials <= 0.99


def test_groups_resample_whole_clusters():
    # 20 groups of 50 identical examples: the information is in 20 values, not 1,000
    rng = np.random.default_rng(3)
    x = np.repeat(rng.normal(0, 1, 20), 50)
    g = np.repeat(np.arange(20), 50)
    flat = paired_bootstrap_ci(lambda v: float(v.mean()), [x], n_boot=1000)
    grouped = paired_bootstrap_ci(lambda v: float(v.mean()), [x], n_boot=1000, groups=g)
    means = paired_bootstrap_ci(lambda v: float(v.mean()), [x[::50]], n_boot=1000)
    assert grouped.high - grouped.low > 4 * (flat.high - flat.low)
    assert grouped.high - grouped.low == pytest.approx(means.high - means.low, rel=0.15)


def test_rows_are_resampled_only_when_asked():
    # seeds (rows) differ by a constant, every example alike: only row resampling sees spread
    x = np.array([[0.0] * 100, [1.0] * 100, [2.0] * 100])  # (R=3, N=100)
    fixed = paired_bootstrap_ci(lambda v: float(v.mean()), [x], n_boot=300)
    rows = paired_bootstrap_ci(lambda v: float(v.mean()), [x], n_boot=300, replicates=True)
    assert fixed.low == fixed.high == 1.0
    assert rows.low < 1.0 < rows.high and 0.0 <= rows.low and rows.high <= 2.0


def test_undefined_replicates_are_dropped_and_counted():
    x = np.array([0.0] * 98 + [1.0] * 2)  # undefined when no 1 is drawn: P = 0.98^100 = 13%

    def share(v):
        return None if v.sum() == 0 else float(v.mean())

    ci = paired_bootstrap_ci(share, [x], n_boot=500, seed=0)
    assert 370 < ci.n_valid < 490
    assert math.isfinite(ci.low) and ci.low <= ci.estimate <= ci.high


def test_same_seed_same_interval_and_tensors_accepted():
    a = torch.rand(300)
    one = paired_bootstrap_ci(lambda v: float(v.mean()), [a], n_boot=200, seed=5)
    two = paired_bootstrap_ci(lambda v: float(v.mean()), [a.numpy()], n_boot=200, seed=5)
    assert one == two
    assert one.as_list() == [one.low, one.high]


@pytest.mark.parametrize("kwargs, arrays, match", [
    ({}, [], "at least one array"),
    ({}, [np.zeros(3), np.zeros(4)], "same N examples"),
    ({"n_boot": 0}, [np.zeros(3)], "n_boot"),
    ({"level": 1.0}, [np.zeros(3)], "level"),
    ({"groups": np.zeros(2)}, [np.zeros(3)], "groups"),
    ({"replicates": True}, [np.zeros(3)], "row axis"),
    ({"replicates": [True, False]}, [np.zeros((2, 3))], "flags"),
])
def test_bad_inputs_say_what_is_wrong(kwargs, arrays, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap_ci(lambda *v: 0.0, arrays, **kwargs)
