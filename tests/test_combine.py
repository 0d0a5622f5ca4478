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


def scipy_optimum(p_g, p_ms, subsets, active):
    """Minimise the objective for one example (batch of 1) with softmax-parametrised L-BFGS."""

    def f(z):
        zt = torch.tensor(z, requires_grad=True)
        q = torch.softmax(zt, 0)[None]
        val = combination_objective(q, p_g, p_ms, subsets, active)[0]
        val.backward()
        return val.item(), zt.grad.numpy()

    best = None
    for z0 in (np.log(p_g[0].numpy()), np.zeros(p_g.shape[1])):
        res = minimize(f, z0, jac=True, method="L-BFGS-B",
                       options={"maxiter": 10_000, "ftol": 1e-15, "gtol": 1e-12})
        if best is None or res.fun < best.fun:
            best = res
    return torch.softmax(torch.tensor(best.x), 0), best.fun


@pytest.mark.parametrize("seed", range(8))
def test_matches_scipy_optimum(seed):
    p_g, p_ms, subsets = random_case(seed)
    q = combine_predictions(p_g, p_ms, subsets, top_n=None)
    active = torch.ones(p_g.shape[0], len(subsets), dtype=torch.bool)
    ours = combination_objective(q, p_g, p_ms, subsets, active)
    for i in range(p_g.shape[0]):
        row = (p_g[i : i + 1], [p[i : i + 1] for p in p_ms], subsets, active[i : i + 1])
        q_ref, f_ref = scipy_optimum(*row)
        assert ours[i].item() <= f_ref + 1e-6
        assert abs(ours[i].item() - f_ref) <= 1e-6
        torch.testing.assert_close(q[i], q_ref, atol=1e-4, rtol=0)


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
