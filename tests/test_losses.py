"""Known answers for the distillation losses (Hinton, Vinyals & Dean 2015), in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ensemble_kd.losses import (
    COMBINE_MODES,
    distillation_loss,
    distillation_loss_parts,
    hard_loss,
    logit_matching_loss,
    soft_targets,
)

D = torch.float64


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def _grad(fn, z: torch.Tensor) -> torch.Tensor:
    """d fn(z) / d z by autograd."""
    z = z.clone().requires_grad_(True)
    fn(z).backward()
    return z.grad


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.log()).sum(-1)


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim, straight from the definition."""
    return (p * (p.log() - q.log())).sum(-1)


# --------------------------------------------------------------------------- soft targets


def test_soft_targets_hand_case_t1():
    logits = torch.tensor([0.0, math.log(2), math.log(4)], dtype=D)
    expected = torch.tensor([1 / 7, 2 / 7, 4 / 7], dtype=D)
    torch.testing.assert_close(soft_targets(logits, 1.0), expected, rtol=0, atol=1e-15)


def test_soft_targets_hand_case_t2():
    # exp(z / 2) = [1, sqrt 2, 2]
    logits = torch.tensor([0.0, math.log(2), math.log(4)], dtype=D)
    r2 = math.sqrt(2)
    expected = torch.tensor([1, r2, 2], dtype=D) / (3 + r2)
    torch.testing.assert_close(soft_targets(logits, 2.0), expected, rtol=0, atol=1e-15)


def test_soft_targets_batched_rows_sum_to_one_and_soften():
    logits = _randn(3, 4, 6, seed=0)
    p1, p5 = soft_targets(logits, 1.0), soft_targets(logits, 5.0)
    torch.testing.assert_close(p5.sum(-1), torch.ones(3, 4, dtype=D))
    # a higher temperature gives a flatter distribution: larger entropy for every row
    assert (_entropy(p5) > _entropy(p1)).all()


@pytest.mark.parametrize("t", [0.0, -1.0, math.nan, math.inf])
def test_soft_targets_bad_temperature(t):
    with pytest.raises(ValueError, match="temperature"):
        soft_targets(torch.zeros(2, 3), t)


# --------------------------------------------------------------------------- soft term


@pytest.mark.parametrize("combine", COMBINE_MODES)
def test_soft_gradient_equals_t_times_q_minus_p_over_b(combine):
    b, c, t = 5, 7, 3.0
    z, v = _randn(b, c, seed=1), _randn(b, c, seed=2)
    labels = torch.tensor([0, 1, 2, 3, 4])
    g = _grad(
        lambda s: distillation_loss(s, v, labels, temperature=t, alpha=1.0, combine=combine), z
    )
    q, p = torch.softmax(z / t, -1), torch.softmax(v / t, -1)
    torch.testing.assert_close(g, t * (q - p) / b, rtol=1e-12, atol=1e-14)


def test_soft_value_is_t_squared_kl_batch_mean():
    t = 2.5
    z, v = _randn(4, 6, seed=3), _randn(4, 6, seed=4)
    expected = t * t * _kl(torch.softmax(v / t, -1), torch.softmax(z / t, -1)).mean()
    parts = distillation_loss_parts(z, v, temperature=t)
    torch.testing.assert_close(parts.soft, expected, rtol=1e-12, atol=0)
    assert parts.hard is None
    assert torch.equal(parts.loss, parts.soft)


@pytest.mark.parametrize("combine", COMBINE_MODES)
@pytest.mark.parametrize("k", [1, 3])
def test_soft_term_zero_when_student_equals_teacher(combine, k):
    z = _randn(4, 5, seed=5)
    v = z.expand(k, 4, 5).clone() if k > 1 else z.clone()  # K identical teachers, or (B, C)
    loss = distillation_loss(z, v, temperature=3.0, combine=combine)
    assert abs(float(loss)) < 1e-12
    g = _grad(lambda s: distillation_loss(s, v, temperature=3.0, combine=combine), z)
    assert float(g.abs().max()) < 1e-14


def test_high_temperature_limit_is_logit_matching():
    z, v = _randn(6, 8, seed=6), _randn(6, 8, seed=7)
    z, v = z - z.mean(-1, keepdim=True), v - v.mean(-1, keepdim=True)  # zero-mean logits
    target = logit_matching_loss(z, v)
    errors = []
    for t in (10.0, 100.0, 1000.0):
        soft = distillation_loss(z, v, temperature=t, alpha=1.0)
        errors.append(float(abs(soft - target) / target))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3


def test_logit_matching_hand_case_and_shift_invariance():
    z = torch.tensor([[1.0, -1.0]], dtype=D)
    v = torch.zeros(1, 2, dtype=D)
    # (1 / (2C)) * sum (z - v)^2 = (1 / 4) * 2
    assert float(logit_matching_loss(z, v)) == pytest.approx(0.5, abs=1e-15)
    # per-example constants are removed first (softmax ignores them too)
    assert float(logit_matching_loss(z + 10.0, v - 3.0)) == pytest.approx(0.5, abs=1e-13)


def test_logit_matching_rejects_several_teachers():
    with pytest.raises(ValueError, match="one teacher"):
        logit_matching_loss(torch.zeros(2, 3), torch.zeros(2, 2, 3))


# --------------------------------------------------------------------------- several teachers


def _three_teachers():
    z = _randn(5, 6, seed=8)
    v = 2.0 * _randn(3, 5, 6, seed=9)  # (K, B, C), quite different teachers
    w = torch.tensor([0.5, 0.3, 0.2], dtype=D)
    return z, v, w


def test_sum_and_mean_probs_same_gradient_values_differ_by_entropy():
    z, v, w = _three_teachers()
    t = 2.0
    kw = dict(temperature=t, teacher_weights=w)
    g_sum = _grad(lambda s: distillation_loss(s, v, combine="sum", **kw), z)
    g_mix = _grad(lambda s: distillation_loss(s, v, combine="mean_probs", **kw), z)
    torch.testing.assert_close(g_sum, g_mix, rtol=1e-10, atol=1e-13)

    l_sum = distillation_loss(z, v, combine="sum", **kw)
    l_mix = distillation_loss(z, v, combine="mean_probs", **kw)
    p = torch.softmax(v / t, -1)  # (K, B, C)
    p_bar = (w[:, None, None] * p).sum(0)  # (B, C)
    # sum_k w_k KL(p_k||q) - KL(p_bar||q) = H(p_bar) - sum_k w_k H(p_k) (cross-entropy is linear)
    gap = t * t * (_entropy(p_bar) - (w[:, None] * _entropy(p)).sum(0)).mean()
    assert float(gap) > 1e-3  # the teachers disagree, so the two values really differ
    torch.testing.assert_close(l_sum - l_mix, gap, rtol=1e-10, atol=1e-13)


def test_each_combine_mode_value_from_its_definition():
    z, v, w = _three_teachers()
    t = 3.0
    q = torch.softmax(z / t, -1)
    p = torch.softmax(v / t, -1)
    expected = {
        "sum": t * t * (w[:, None] * _kl(p, q[None])).sum(0).mean(),
        "mean_probs": t * t * _kl((w[:, None, None] * p).sum(0), q).mean(),
        "mean_logits": t * t * _kl(torch.softmax((w[:, None, None] * v).sum(0) / t, -1), q).mean(),
    }
    for mode, value in expected.items():
        got = distillation_loss(z, v, temperature=t, teacher_weights=w, combine=mode)
        torch.testing.assert_close(got, value, rtol=1e-12, atol=0, msg=mode)


def test_mean_logits_is_a_different_target():
    z, v, w = _three_teachers()
    kw = dict(temperature=2.0, teacher_weights=w)
    g_sum = _grad(lambda s: distillation_loss(s, v, combine="sum", **kw), z)
    g_geo = _grad(lambda s: distillation_loss(s, v, combine="mean_logits", **kw), z)
    assert float((g_sum - g_geo).abs().max()) > 1e-3


@pytest.mark.parametrize("combine", COMBINE_MODES)
def test_teacher_weights_uniform_by_default_and_normalised(combine):
    z, v, w = _three_teachers()
    kw = dict(temperature=2.0, combine=combine)
    default = distillation_loss(z, v, **kw)
    for same in (torch.ones(3) / 3, [5.0, 5.0, 5.0]):
        torch.testing.assert_close(default, distillation_loss(z, v, teacher_weights=same, **kw))
    torch.testing.assert_close(
        distillation_loss(z, v, teacher_weights=2 * w, **kw),
        distillation_loss(z, v, teacher_weights=w, **kw),
    )
    # weights really matter
    assert abs(float(distillation_loss(z, v, teacher_weights=w, **kw) - default)) > 1e-4


@pytest.mark.parametrize("combine", COMBINE_MODES)
def test_one_hot_teacher_weight_selects_that_teacher(combine):
    z, v, _ = _three_teachers()
    kw = dict(temperature=2.0, combine=combine)
    torch.testing.assert_close(
        distillation_loss(z, v, teacher_weights=[0.0, 1.0, 0.0], **kw),
        distillation_loss(z, v[1], **kw),
        rtol=1e-12,
        atol=1e-14,
    )


# --------------------------------------------------------------------------- labels and parts


def test_with_labels_alpha_mix_and_parts():
    z, v = _randn(6, 4, seed=10), _randn(6, 4, seed=11)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    t, a = 4.0, 0.7
    parts = distillation_loss_parts(z, v, y, temperature=t, alpha=a)
    soft = t * t * _kl(torch.softmax(v / t, -1), torch.softmax(z / t, -1)).mean()
    hard = -torch.log_softmax(z, -1)[torch.arange(6), y].mean()  # CE at T = 1
    torch.testing.assert_close(parts.soft, soft, rtol=1e-12, atol=0)
    torch.testing.assert_close(parts.hard, hard, rtol=1e-12, atol=0)
    torch.testing.assert_close(parts.loss, a * soft + (1 - a) * hard, rtol=1e-12, atol=0)
    torch.testing.assert_close(distillation_loss(z, v, y, temperature=t, alpha=a), parts.loss)
    # the hard term does not depend on T
    other = distillation_loss_parts(z, v, y, temperature=1.5, alpha=a)
    torch.testing.assert_close(other.hard, hard, rtol=1e-12, atol=0)


@pytest.mark.parametrize("t", [1.0, 4.0])
@pytest.mark.parametrize("a", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("target", ["labels", "mixed", "none"])
def test_gradient_matches_autograd_of_the_written_out_loss(t, a, target):
    # value and gradient against the loss written out term by term, independently of the module:
    # one KL per teacher, T^2-scaled, plus the cross-entropy of the (mixed) hard target
    from ensemble_kd.views import Mix

    b, c, k = 7, 5, 3
    z, v = _randn(b, c, seed=40), _randn(k, b, c, seed=41)
    y, y2 = torch.tensor([0, 1, 2, 3, 4, 0, 1]), torch.tensor([4, 4, 0, 1, 2, 3, 3])
    lam = torch.rand(b, generator=torch.Generator().manual_seed(42))
    mix = Mix(partner=torch.arange(b), lam=lam.float(), partner_y=y2) if target == "mixed" else None
    labels = None if target == "none" else y

    def written_out(s: torch.Tensor) -> torch.Tensor:
        log_q = torch.log_softmax(s / t, -1)
        soft = t * t * sum((torch.softmax(v[i] / t, -1) * (torch.log_softmax(v[i] / t, -1) - log_q))
                           .sum(-1).mean() for i in range(k)) / k
        if labels is None:
            return soft
        log_p = torch.log_softmax(s, -1)
        hard = -log_p[torch.arange(b), y]
        if mix is not None:
            hard = lam.to(D) * hard - (1 - lam.to(D)) * log_p[torch.arange(b), y2]
        return a * soft + (1 - a) * hard.mean()

    kw = {"temperature": t, "alpha": a, "mix": mix}
    ours = distillation_loss_parts(z, v, labels, **kw)
    torch.testing.assert_close(ours.loss, written_out(z), rtol=1e-10, atol=1e-12)
    g = _grad(lambda s: distillation_loss_parts(s, v, labels, **kw).loss, z)
    torch.testing.assert_close(g, _grad(written_out, z), rtol=1e-10, atol=1e-12)


def test_parts_have_their_own_gradients():
    # soft and hard backpropagate on their own too (a user may weight them outside the loss)
    z, v = _randn(6, 4, seed=50), _randn(6, 4, seed=51)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    t = 3.0
    g_soft = _grad(lambda s: distillation_loss_parts(s, v, y, temperature=t, alpha=0.2).soft, z)
    q, p = torch.softmax(z / t, -1), torch.softmax(v / t, -1)
    torch.testing.assert_close(g_soft, t * (q - p) / 6, rtol=1e-10, atol=1e-12)
    g_hard = _grad(lambda s: distillation_loss_parts(s, v, y, temperature=t, alpha=0.2).hard, z)
    torch.testing.assert_close(g_hard, _grad(lambda s: F.cross_entropy(s, y), z), rtol=1e-10,
                               atol=1e-12)


def test_float32_soft_term_is_accurate_for_a_close_student():
    from ensemble_kd.views import Mix

    # the soft term is a small difference (KL) of large sums: in float32 it must still match the
    # float64 answer to a few parts in a million of the entropies, not lose it to cancellation
    b, c, t = 4096, 10, 4.0
    v = _randn(b, c, seed=60) * 5
    z = v + 0.01 * _randn(b, c, seed=61)  # a student close to its teacher: KL ~ 1e-5
    y = torch.randint(0, c, (b,), generator=torch.Generator().manual_seed(62))
    g = torch.Generator().manual_seed(63)
    mixed = Mix(torch.arange(b), torch.rand(b, generator=g), torch.randint(0, c, (b,), generator=g))
    for mix in (None, mixed):  # the one-hot and the mixed-label paths
        exact = distillation_loss_parts(z, v, y, temperature=t, alpha=0.5, mix=mix)
        got = distillation_loss_parts(z.float(), v.float(), y, temperature=t, alpha=0.5, mix=mix)
        assert got.soft.dtype == torch.float32
        assert 0 < float(exact.soft) < 1e-3
        assert abs(float(got.soft) - float(exact.soft)) < 2e-3 * float(exact.soft)
        torch.testing.assert_close(got.hard.double(), exact.hard, rtol=1e-6, atol=0)


def test_int32_labels_are_class_indices_too():
    # the validator accepts any integer dtype ("labels must be integer class indices"), so an int32
    # label vector (numpy's default on some platforms) must give the int64 answer, not crash
    z, v = _randn(4, 5, seed=15), _randn(4, 5, seed=16)
    y = torch.tensor([0, 4, 2, 1])
    expected = distillation_loss(z, v, y, alpha=0.5)
    torch.testing.assert_close(distillation_loss(z, v, y.int(), alpha=0.5), expected)


def test_alpha_zero_is_plain_cross_entropy():
    z, v = _randn(6, 4, seed=12), _randn(6, 4, seed=13)
    y = torch.tensor([3, 1, 2, 0, 0, 1])
    torch.testing.assert_close(
        distillation_loss(z, v, y, alpha=0.0), F.cross_entropy(z, y), rtol=1e-12, atol=0
    )


def test_hard_loss_parts():
    z = _randn(5, 3, seed=14)
    y = torch.tensor([0, 2, 1, 1, 0])
    parts = hard_loss(z, y)
    torch.testing.assert_close(parts.loss, F.cross_entropy(z, y))
    torch.testing.assert_close(parts.hard, parts.loss)
    assert float(parts.soft) == 0.0


# --------------------------------------------------------------------------- errors


def _call(**over):
    kw = dict(
        student_logits=torch.zeros(4, 5),
        teacher_logits=torch.zeros(2, 4, 5),
        labels=torch.tensor([0, 1, 2, 3]),
        temperature=2.0,
        alpha=0.5,
        combine="sum",
        teacher_weights=None,
    )
    kw.update(over)
    return distillation_loss(
        kw.pop("student_logits"), kw.pop("teacher_logits"), kw.pop("labels"), **kw
    )


def test_default_call_is_valid():
    # the baseline of the error cases below does not raise (so each error has one cause)
    assert torch.isfinite(_call())


@pytest.mark.parametrize(
    "over, match",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-2.0), "temperature"),
        (dict(temperature=math.nan), "temperature"),
        (dict(temperature=math.inf), "temperature"),
        (dict(temperature="hot"), "temperature"),
        (dict(alpha=-0.1), "alpha"),
        (dict(alpha=1.5), "alpha"),
        (dict(alpha=math.nan), "alpha"),
        (dict(combine="median"), "combine"),
        (dict(student_logits=torch.zeros(4)), "student_logits"),
        (dict(teacher_logits=torch.zeros(1, 2, 4, 5)), "teacher_logits"),
        (dict(teacher_logits=torch.zeros(2, 4, 6)), "class-count"),
        (dict(teacher_logits=torch.zeros(4, 6)), "class-count"),
        (dict(teacher_logits=torch.zeros(2, 3, 5)), "batch-size"),
        (dict(teacher_logits=torch.zeros(3, 5)), "batch-size"),
        (dict(student_logits=torch.tensor([[math.nan] * 5] * 4)), "non-finite"),
        (dict(teacher_logits=torch.full((2, 4, 5), math.inf)), "non-finite"),
        (dict(labels=torch.tensor([0, 1, 2, 5])), "out of range"),
        (dict(labels=torch.tensor([0, -1, 2, 3])), "out of range"),
        (dict(labels=torch.tensor([0, 1, 2])), "labels must have shape"),
        (dict(labels=torch.tensor([0.0, 1.0, 2.0, 3.0])), "integer"),
        (dict(teacher_weights=[1.0, -0.5]), "non-negative"),
        (dict(teacher_weights=[0.0, 0.0]), "zero"),
        (dict(teacher_weights=[1.0, 1.0, 1.0]), "3 entries but there are 2 teachers"),
        (dict(teacher_weights=[1.0, math.nan]), "finite"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(over, match):
    with pytest.raises(ValueError, match=match):
        _call(**over)
