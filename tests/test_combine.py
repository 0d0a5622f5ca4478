import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from specialists.combine import (
    active_specialists,
    combination_objective,
    combine_gradient_descent,
    combine_predictions,
    em_update,
)
from specialists.subsets import fold_probs


def random_case(seed: int, batch: int = 3):
    """C in 4..8, 1-3 random (overlapping) subsets, strictly positive distributions."""
    g = torch.Generator().manual_seed(seed)
    c = int(torch.randint(4, 9, (1,), generator=g))
    m = int(torch.randint(1, 4, (1,), generator=g))
    subsets = []
    for _ in range(m):
        k = int(torch.randint(2, c, (1,), generator=g))
        subsets.append(torch.randperm(c, generator=g)[:k].tolist())
    p_g = torch.softmax(2 * torch.randn(batch, c, generator=g, dtype=torch.float64), 1)
    p_ms = [
        torch.softmax(2 * torch.randn(batch, len(s) + 1, generator=g, dtype=torch.float64), 1)
        for s in subsets
    ]
    return p_g, p_ms, subsets


def fold_matrix(subset: list[int], c: int) -> np.ndarray:
    """A_m of DESIGN.md as an explicit 0/1 matrix (|S|+1, C): row k < |S| picks class subset[k],
    the last row sums every class outside the subset (the dustbin)."""
    a = np.zeros((len(subset) + 1, c))
    a[np.arange(len(subset)), subset] = 1.0
    a[-1, [i for i in range(c) if i not in subset]] = 1.0
    return a


def kl(p: np.ndarray, r: np.ndarray) -> float:
    keep = p > 0
    return float(np.sum(p[keep] * (np.log(p[keep]) - np.log(r[keep]))))


def reference_objective(q, p_g, p_ms, mats) -> float:
    """KL(p_g || q) + sum_m KL(p_m || A_m q), written from the definition for one example."""
    return kl(p_g, q) + sum(kl(p, a @ q) for p, a in zip(p_ms, mats, strict=True))


def reference_optimum(p_g, p_ms, mats) -> tuple[np.ndarray, float]:
    """Minimise the reference objective over the simplex: q = softmax(z), L-BFGS with the exact
    gradient, from two starts, the better kept."""

    def f(z):
        q = np.exp(z - z.max())
        q /= q.sum()
        # d/dq: -p_g / q - sum_m A_m^T (p_m / A_m q); then the softmax's chain rule
        g = -p_g / q - sum(a.T @ (p / (a @ q)) for p, a in zip(p_ms, mats, strict=True))
        return reference_objective(q, p_g, p_ms, mats), q * (g - q @ g)

    best = None
    for z0 in (np.log(p_g), np.zeros_like(p_g)):
        res = minimize(f, z0, jac=True, method="L-BFGS-B",
                       options={"maxiter": 100_000, "ftol": 0.0, "gtol": 1e-14, "maxcor": 30})
        if best is None or res.fun < best.fun:
            best = res
    q = np.exp(best.x - best.x.max())
    return q / q.sum(), float(best.fun)


@pytest.mark.parametrize("seed", range(16))
def test_matches_an_independently_written_objective_minimised_by_scipy(seed):
    p_g, p_ms, subsets = random_case(seed)
    q = combine_predictions(p_g, p_ms, subsets, top_n=None).numpy()
    mats = [fold_matrix(s, p_g.shape[1]) for s in subsets]
    for i in range(p_g.shape[0]):
        pg_i, pm_i = p_g[i].numpy(), [p[i].numpy() for p in p_ms]
        q_ref, f_ref = reference_optimum(pg_i, pm_i, mats)
        np.testing.assert_allclose(q[i], q_ref, atol=1e-6, rtol=0)
        assert reference_objective(q[i], pg_i, pm_i, mats) <= f_ref + 1e-12


def test_random_cases_include_overlapping_subsets():
    overlapping = 0
    for seed in range(16):  # the seeds of the comparison with the reference above
        subsets = random_case(seed)[2]
        overlapping += any(set(a) & set(b) for k, a in enumerate(subsets) for b in subsets[:k])
    assert overlapping >= 7  # seeds 1, 3, 7, 8, 9, 12, 13


def test_module_objective_equals_the_reference():
    p_g, p_ms, subsets = random_case(4, batch=5)
    q = torch.softmax(torch.randn(5, p_g.shape[1], dtype=torch.float64), 1)
    active = torch.ones(5, len(subsets), dtype=torch.bool)
    ours = combination_objective(q, p_g, p_ms, subsets, active)
    mats = [fold_matrix(s, p_g.shape[1]) for s in subsets]
    for i in range(5):
        ref = reference_objective(q[i].numpy(), p_g[i].numpy(), [p[i].numpy() for p in p_ms], mats)
        assert ours[i].item() == pytest.approx(ref, rel=1e-12)


def test_known_answer_with_zero_generalist_probabilities():
    # Fixed point by hand: q_0 = (0 + .6) / 2, q_1 = (.5 + .3) / 2; the dustbin {2, 3, 4}
    # holds (.5 + .1) / 2 = .3, split in proportion to p_g: q_i = p_g,i * 3 / 5.
    p_g = torch.tensor([[0.0, 0.5, 0.3, 0.2, 0.0]], dtype=torch.float64)
    p_m = torch.tensor([[0.6, 0.3, 0.1]], dtype=torch.float64)
    q = combine_predictions(p_g, [p_m], [[0, 1]], top_n=None)
    torch.testing.assert_close(q, torch.tensor([[0.3, 0.4, 0.18, 0.12, 0.0]],
                                                dtype=torch.float64), atol=1e-9, rtol=0)


def test_no_active_specialist_returns_generalist_exactly():
    torch.manual_seed(0)
    p_g = torch.softmax(torch.randn(4, 6), 1)
    p_g[:, 5] += 1.0  # make class 5 the top class of every row...
    p_g = p_g / p_g.sum(1, keepdim=True)
    p_ms = [torch.softmax(torch.randn(4, 3), 1)]
    q = combine_predictions(p_g, p_ms, [[0, 1]], top_n=1)  # ...which no subset contains
    assert q.dtype == torch.float32
    assert torch.equal(q, p_g)


def test_agreeing_specialists_return_generalist():
    p_g, _, subsets = random_case(3, batch=5)
    p_ms = [fold_probs(p_g, s) for s in subsets]
    active = torch.ones(5, len(subsets), dtype=torch.bool)
    q = combine_predictions(p_g, p_ms, subsets, top_n=None)
    torch.testing.assert_close(q, p_g, atol=1e-12, rtol=0)
    assert combination_objective(q, p_g, p_ms, subsets, active).abs().max() < 1e-12


def test_result_is_a_distribution_in_input_dtype():
    p_g, p_ms, subsets = random_case(5, batch=16)
    q = combine_predictions(p_g.float(), [p.float() for p in p_ms], subsets, top_n=2)
    assert q.dtype == torch.float32 and q.shape == p_g.shape
    assert (q >= 0).all()
    torch.testing.assert_close(q.sum(1), torch.ones(16), atol=1e-6, rtol=0)


def test_active_specialists_top_n_semantics():
    p_g = torch.tensor([[0.5, 0.3, 0.1, 0.1, 0.0], [0.1, 0.1, 0.2, 0.2, 0.4]])
    subsets = [[0, 4], [1, 2], [3, 2]]
    assert active_specialists(p_g, subsets, top_n=1).tolist() == [
        [True, False, False], [True, False, False]]
    # Row 1's second place is a tie between classes 2 and 3: the smaller index wins.
    assert active_specialists(p_g, subsets, top_n=2).tolist() == [
        [True, True, False], [True, True, True]]
    assert active_specialists(p_g, subsets, top_n=None).all()
    assert active_specialists(p_g, subsets, top_n=99).all()
    with pytest.raises(ValueError, match="top_n"):
        active_specialists(p_g, subsets, top_n=0)


def test_top_n_equals_solving_with_active_specialists_only():
    p_g, p_ms, subsets = random_case(1, batch=1)  # 3 subsets, the third inactive at top_n=2
    assert active_specialists(p_g, subsets, top_n=2)[0].tolist() == [True, True, False]
    q = combine_predictions(p_g, p_ms, subsets, top_n=2)
    q_ref = combine_predictions(p_g, p_ms[:2], subsets[:2], top_n=None)
    torch.testing.assert_close(q, q_ref, atol=1e-9, rtol=0)
    q_all = combine_predictions(p_g, p_ms, subsets, top_n=None)
    assert (q - q_all).abs().max() > 1e-3  # the inactive specialist would have mattered


def test_batch_equals_per_example():
    p_g, p_ms, subsets = random_case(7, batch=8)
    q = combine_predictions(p_g, p_ms, subsets, top_n=None)
    for i in range(8):
        qi = combine_predictions(p_g[i : i + 1], [p[i : i + 1] for p in p_ms], subsets,
                                 top_n=None)
        torch.testing.assert_close(q[i : i + 1], qi, atol=1e-13, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_em_never_increases_objective_and_plain_em_reaches_the_same_optimum(seed):
    p_g, p_ms, subsets = random_case(seed, batch=4)
    active = torch.ones(4, len(subsets), dtype=torch.bool)
    q = torch.full_like(p_g, 1.0 / p_g.shape[1])
    prev = combination_objective(q, p_g, p_ms, subsets, active)
    for _ in range(200):
        q = em_update(q, p_g, p_ms, subsets, active)
        cur = combination_objective(q, p_g, p_ms, subsets, active)
        assert (cur <= prev + 1e-13).all()
        prev = cur
    fast = combine_predictions(p_g, p_ms, subsets, top_n=None)
    slow = combine_predictions(p_g, p_ms, subsets, top_n=None, accelerate=False,
                               max_iter=200_000, tol=1e-12)
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=0)
    best = combination_objective(fast, p_g, p_ms, subsets, active)
    assert (best <= prev + 1e-12).all()  # no worse than 200 plain EM steps


def test_unconverged_examples_warn():
    p_g, p_ms, subsets = random_case(1, batch=4)
    with pytest.warns(RuntimeWarning, match="did not reach tol"):
        combine_predictions(p_g, p_ms, subsets, top_n=None, accelerate=False, max_iter=1,
                            tol=1e-15)


def test_gradient_descent_baseline_gets_close_to_the_optimum():
    p_g, p_ms, subsets = random_case(2, batch=3)
    active = torch.ones(3, len(subsets), dtype=torch.bool)
    q_gd = combine_gradient_descent(p_g, p_ms, subsets, top_n=None)
    q_em = combine_predictions(p_g, p_ms, subsets, top_n=None)
    f_gd = combination_objective(q_gd, p_g, p_ms, subsets, active)
    f_em = combination_objective(q_em, p_g, p_ms, subsets, active)
    assert (f_em <= f_gd + 1e-12).all()
    assert (f_gd - f_em).max() < 1e-6
    # and it too leaves examples without an active specialist alone
    none = combine_gradient_descent(p_g, p_ms, subsets, top_n=1)
    inactive = ~active_specialists(p_g, subsets, top_n=1).any(1)
    assert torch.equal(none[inactive], p_g[inactive])


def test_combination_objective_known_value():
    p_g = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.5, 0.25]], dtype=torch.float64)
    p_m = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)  # on [0, 1] + dustbin {2}
    active = torch.tensor([[True]])
    f = combination_objective(q, p_g, [p_m], [[0, 1]], active)
    expected = 0.5 * np.log(0.5 / 0.25) + 1.0 * np.log(1.0 / 0.25)
    assert f.item() == pytest.approx(expected, rel=1e-12)
    f_off = combination_objective(q, p_g, [p_m], [[0, 1]], torch.tensor([[False]]))
    assert f_off.item() == pytest.approx(0.5 * np.log(2.0), rel=1e-12)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {**a, "generalist_probs": a["generalist_probs"][0]},
         "generalist_probs has shape"),
        (lambda a: {**a, "generalist_probs": a["generalist_probs"] * 2}, "sums to"),
        (lambda a: {**a, "generalist_probs": -a["generalist_probs"]}, "negative"),
        (lambda a: {**a, "specialist_probs": a["specialist_probs"][:1]},
         "got 1 specialist outputs for 2 subsets"),
        (lambda a: {**a, "specialist_probs": [a["specialist_probs"][0],
                                             a["specialist_probs"][0]]},
         r"specialist_probs\[1\] has shape"),
        (lambda a: {**a, "subsets": [[0, 1], [2, 9]]}, "contains class 9 but there are only 5"),
        (lambda a: {**a, "top_n": 0}, "top_n"),
        (lambda a: {**a, "tol": -1.0}, "tol"),
        (lambda a: {**a, "max_iter": 0}, "max_iter"),
    ],
)
def test_combine_predictions_errors(change, message):
    p_g = torch.softmax(torch.randn(2, 5), 1)
    p_ms = [torch.softmax(torch.randn(2, 3), 1), torch.softmax(torch.randn(2, 4), 1)]
    args = {"generalist_probs": p_g, "specialist_probs": p_ms, "subsets": [[0, 1], [2, 3, 4]]}
    with pytest.raises(ValueError, match=message):
        combine_predictions(**change(args))


def test_objective_rejects_bad_active_and_q():
    p_g = torch.softmax(torch.randn(2, 5), 1)
    p_ms = [torch.softmax(torch.randn(2, 3), 1)]
    with pytest.raises(ValueError, match="active has shape"):
        combination_objective(p_g, p_g, p_ms, [[0, 1]], torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="active must be a bool"):
        combination_objective(p_g, p_g, p_ms, [[0, 1]], torch.ones(2, 1))
    with pytest.raises(ValueError, match="q must"):
        combination_objective(-p_g, p_g, p_ms, [[0, 1]], torch.ones(2, 1, dtype=torch.bool))
