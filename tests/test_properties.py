"""Property tests (hypothesis) of the two numerical cores: the distillation loss and the
generalist + specialists combination.

``distillation_loss``: finite, a non-negative soft term, and invariant to adding a constant to each
example's logits (softmax cannot see it), for every combine mode, with and without labels.

``combine_predictions``: returns distributions; never a worse objective than the generalist's own
distribution (the starting point of the minimisation); and it commutes with relabelling the classes
(permuting columns and renaming the subsets' classes) and with reordering the specialists.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ensemble_kd.losses import COMBINE_MODES, distillation_loss, distillation_loss_parts
from specialists.combine import active_specialists, combination_objective, combine_predictions

SETTINGS = settings(max_examples=50, deadline=None, database=None)  # no .hypothesis/ folder


def _logits(shape: tuple[int, ...], bound: float) -> st.SearchStrategy[np.ndarray]:
    return arrays(np.float64, shape, elements=st.floats(-bound, bound, allow_nan=False))


# ---------------------------------------------------------------- distillation_loss


@st.composite
def loss_cases(draw, bound: float = 30.0) -> dict:
    b, c, k = draw(st.integers(1, 4)), draw(st.integers(2, 6)), draw(st.integers(1, 3))
    weights = draw(st.none() | st.lists(st.floats(0.0, 10.0), min_size=k, max_size=k))
    if weights is not None:
        assume(sum(weights) > 1e-3)
    labels = draw(st.none() | st.lists(st.integers(0, c - 1), min_size=b, max_size=b))
    return {
        "z": torch.from_numpy(draw(_logits((b, c), bound))),  # (B, C)
        "v": torch.from_numpy(draw(_logits((k, b, c), bound))),  # (K, B, C)
        "labels": None if labels is None else torch.tensor(labels),  # (B,)
        "kw": {
            "temperature": draw(st.floats(0.1, 20.0)),
            "alpha": draw(st.floats(0.0, 1.0)),
            "combine": draw(st.sampled_from(COMBINE_MODES)),
            "teacher_weights": weights,
        },
    }


@SETTINGS
@given(case=loss_cases())
def test_distillation_loss_is_finite_with_a_non_negative_soft_term(case):
    parts = distillation_loss_parts(case["z"], case["v"], case["labels"], **case["kw"])
    assert torch.isfinite(parts.loss)
    assert parts.soft >= -1e-6
    if parts.hard is not None:
        assert parts.hard >= 0


@SETTINGS
@given(case=loss_cases(bound=1e4))
def test_distillation_loss_stays_finite_for_huge_float32_logits(case):
    z, v = case["z"].float(), case["v"].float()
    parts = distillation_loss_parts(z, v, case["labels"], **case["kw"])
    assert torch.isfinite(parts.loss) and torch.isfinite(parts.soft)


@SETTINGS
@given(case=loss_cases(), data=st.data())
def test_distillation_loss_ignores_a_constant_added_to_each_examples_logits(case, data):
    z, v, labels, kw = case["z"], case["v"], case["labels"], case["kw"]
    b, k = z.shape[0], v.shape[0]
    shift_z = torch.from_numpy(data.draw(_logits((b, 1), 50.0)))  # (B, 1) one constant per row
    shift_v = torch.from_numpy(data.draw(_logits((k, b, 1), 50.0)))  # (K, B, 1)
    base = distillation_loss(z, v, labels, **kw)
    torch.testing.assert_close(distillation_loss(z + shift_z, v, labels, **kw), base,
                               rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(distillation_loss(z, v + shift_v, labels, **kw), base,
                               rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- combine_predictions


@st.composite
def combine_cases(draw) -> dict:
    c, b, m = draw(st.integers(3, 7)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    subsets = [
        draw(st.lists(st.integers(0, c - 1), min_size=2, max_size=c - 1, unique=True))
        for _ in range(m)
    ]
    p_g = torch.softmax(torch.from_numpy(draw(_logits((b, c), 12.0))), -1)  # (B, C)
    p_ms = [torch.softmax(torch.from_numpy(draw(_logits((b, len(s) + 1), 12.0))), -1)
            for s in subsets]  # M x (B, |S_m| + 1)
    return {"p_g": p_g, "p_ms": p_ms, "subsets": subsets,
            "top_n": draw(st.none() | st.integers(1, c))}


@SETTINGS
@given(case=combine_cases())
def test_combination_is_a_distribution_no_worse_than_the_generalist(case):
    p_g, p_ms, subsets, top_n = case["p_g"], case["p_ms"], case["subsets"], case["top_n"]
    q = combine_predictions(p_g, p_ms, subsets, top_n=top_n)
    assert q.shape == p_g.shape and torch.isfinite(q).all()
    assert (q >= 0).all()
    torch.testing.assert_close(q.sum(-1), torch.ones(len(q), dtype=q.dtype), rtol=0, atol=1e-9)
    active = active_specialists(p_g, subsets, top_n)
    f_q = combination_objective(q, p_g, p_ms, subsets, active)
    f_g = combination_objective(p_g, p_g, p_ms, subsets, active)
    assert (f_q <= f_g + 1e-9).all(), (f_q, f_g)


@SETTINGS
@given(case=combine_cases(), data=st.data())
def test_combination_commutes_with_relabelling_the_classes(case, data):
    p_g, p_ms, subsets = case["p_g"], case["p_ms"], case["subsets"]
    c = p_g.shape[1]
    perm = data.draw(st.permutations(range(c)))  # new class j is old class perm[j]
    new_of = {old: new for new, old in enumerate(perm)}
    subsets_p = [[new_of[i] for i in s] for s in subsets]  # same order: specialists unchanged
    top_n = data.draw(st.none() | st.just(1))
    if top_n is not None:  # ties in the generalist's top class would be broken by index
        top2 = p_g.topk(2, dim=-1).values
        assume(bool((top2[:, 0] - top2[:, 1] > 1e-9).all()))
    q = combine_predictions(p_g, p_ms, subsets, top_n=top_n)
    q_p = combine_predictions(p_g[:, perm], p_ms, subsets_p, top_n=top_n)
    torch.testing.assert_close(q_p, q[:, perm], rtol=0, atol=1e-6)


@SETTINGS
@given(case=combine_cases(), data=st.data())
def test_combination_commutes_with_reordering_the_specialists(case, data):
    p_g, p_ms, subsets, top_n = case["p_g"], case["p_ms"], case["subsets"], case["top_n"]
    order = data.draw(st.permutations(range(len(subsets))))
    q = combine_predictions(p_g, p_ms, subsets, top_n=top_n)
    q_o = combine_predictions(p_g, [p_ms[i] for i in order], [subsets[i] for i in order],
                              top_n=top_n)
    torch.testing.assert_close(q_o, q, rtol=0, atol=1e-6)
