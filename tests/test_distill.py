"""Distillation on the embedded digits: a student learns, cached == online, bad setups refused."""

from __future__ import annotations

import pytest
import torch

from ensemble_kd.batching import TensorBatches
from ensemble_kd.cache import ensure_cache
from ensemble_kd.data import make_transfer_set
from ensemble_kd.distill import (
    DistillConfig,
    cached_objective,
    check_compatible,
    distill,
    online_objective,
)
from ensemble_kd.io import read_jsonl
from ensemble_kd.models import build_model
from ensemble_kd.predict import predict_logits
from ensemble_kd.train import TrainConfig, evaluate_logits, train

STUDENT_CFG = dict(epochs=10, batch_size=64, lr=1e-2)


@pytest.fixture(scope="module")
def teacher(digits):
    """An MLP trained on digits (about 96% test accuracy), in eval mode."""
    torch.manual_seed(0)
    model = build_model("mlp", digits.input_shape, 10, widths=[128])
    train(
        model,
        TensorBatches(digits.x_train, digits.y_train, batch_size=64),
        TrainConfig(epochs=15, lr=1e-2, seed=0),
        progress=False,
    )
    return model.eval()


def _student(digits, seed: int = 1, n_out: int = 10):
    torch.manual_seed(seed)
    return build_model("mlp", digits.input_shape, n_out, widths=[32])


def _acc(model, digits) -> float:
    return evaluate_logits(predict_logits(model, digits.x_test), digits.y_test)["acc"]


def _random_teachers(digits, k: int = 2, dropout: float = 0.0):
    torch.manual_seed(5)
    return [
        build_model("mlp", digits.input_shape, 10, widths=[16], dropout=dropout) for _ in range(k)
    ]


def test_teacher_is_good(teacher, digits):
    assert _acc(teacher, digits) >= 0.93


@pytest.mark.parametrize("labelled", [True, False])
def test_distilled_student_reaches_sensible_accuracy(tmp_path, teacher, digits, labelled):
    transfer = make_transfer_set(digits, labelled=labelled)
    result = distill(
        _student(digits),
        [teacher],
        transfer,
        TrainConfig(**STUDENT_CFG),
        DistillConfig(temperature=4.0, alpha=0.9),
        val=(digits.x_val, digits.y_val),
        run_dir=tmp_path / "run",
        progress=False,
    )
    assert _acc(result.model, digits) >= 0.9
    agree = (predict_logits(result.model, digits.x_test).argmax(-1)
             == predict_logits(teacher, digits.x_test).argmax(-1)).float().mean()  # fmt: skip
    assert float(agree) >= 0.9
    assert (tmp_path / "run" / "cache" / "meta.json").is_file()  # the default cache place
    log = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert len(log) == STUDENT_CFG["epochs"] and log[-1]["loss"] < log[0]["loss"]
    if labelled:
        assert all(r["hard"] > 0 for r in log)
    else:  # soft targets only: the logged loss is the soft term, no hard term
        assert all(r["hard"] == 0.0 and r["loss"] == r["soft"] for r in log)


@pytest.mark.parametrize("combine", ["sum", "mean_probs", "mean_logits"])
def test_cached_and_online_objectives_give_the_same_loss(tmp_path, digits, combine):
    # teachers with dropout: the online objective must run them in eval mode, as the cache did
    teachers = _random_teachers(digits, k=2, dropout=0.5)
    for t in teachers:
        t.train()
    transfer = make_transfer_set(digits, fraction=0.2)
    cfg = DistillConfig(temperature=3.0, alpha=0.7, combine=combine, teacher_weights=[1.0, 3.0])
    cache = ensure_cache(teachers, transfer.x, tmp_path / "cache")
    cached, online = cached_objective(cache, cfg), online_objective(teachers, cfg)
    student = _student(digits)
    for batch in TensorBatches(transfer.x, transfer.y, batch_size=50).epoch(
        torch.Generator().manual_seed(0)
    ):
        logits = student(batch.x)
        a, b = cached(logits, batch), online(logits, batch)
        for u, v in [(a.loss, b.loss), (a.soft, b.soft), (a.hard, b.hard)]:
            torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)
        assert float(a.soft.detach()) > 0.01  # a real comparison, not two zeros


def test_cached_and_online_distillation_train_alike(tmp_path, teacher, digits):
    transfer = make_transfer_set(digits, fraction=0.3)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=1e-2)
    runs = {}
    for online in (False, True):
        result = distill(
            _student(digits),
            [teacher],
            transfer,
            cfg,
            DistillConfig(online=online),
            cache_dir=tmp_path / "cache",
            progress=False,
        )
        runs[online] = result.history
    for ra, rb in zip(runs[False], runs[True], strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4)


def test_jitter_without_online_is_refused(tmp_path, teacher, digits):
    with pytest.raises(ValueError, match="online"):
        DistillConfig(jitter=1).validate()
    with pytest.raises(ValueError, match="online"):
        distill(
            _student(digits),
            [teacher],
            make_transfer_set(digits, fraction=0.1),
            TrainConfig(epochs=1),
            DistillConfig(jitter=1),
            cache_dir=tmp_path / "cache",
            progress=False,
        )


def test_online_jitter_distillation_runs(teacher, digits):
    result = distill(
        _student(digits),
        [teacher],
        make_transfer_set(digits, fraction=0.2),
        TrainConfig(epochs=2, batch_size=64, lr=1e-2),
        DistillConfig(online=True, jitter=1),
        progress=False,
    )
    assert len(result.history) == 2 and result.history[-1]["loss"] < result.history[0]["loss"]


def test_student_with_wrong_number_of_outputs(tmp_path, teacher, digits):
    with pytest.raises(ValueError, match="the student has 9 outputs but the teachers have 10"):
        distill(
            _student(digits, n_out=9),
            [teacher],
            make_transfer_set(digits, fraction=0.1),
            TrainConfig(epochs=1),
            cache_dir=tmp_path / "cache",
            progress=False,
        )


def test_teachers_disagreeing_on_classes(digits):
    seven = build_model("mlp", digits.input_shape, 7, widths=[4])
    teachers = [*_random_teachers(digits, k=1), seven]
    with pytest.raises(ValueError, match="disagree"):
        check_compatible(teachers, _student(digits), digits.x_train)
    with pytest.raises(ValueError, match="at least one teacher"):
        check_compatible([], _student(digits), digits.x_train)


def test_topk_cache_distillation(tmp_path, teacher, digits):
    result = distill(
        _student(digits),
        [teacher],
        make_transfer_set(digits, fraction=0.5),
        TrainConfig(epochs=6, batch_size=64, lr=1e-2),
        DistillConfig(temperature=1.0, cache_topk=3, cache_dtype="float16"),  # top-k: T = 1 only
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert _acc(result.model, digits) >= 0.8


def test_finished_run_resumes_and_other_settings_refuse(tmp_path, teacher, digits):
    transfer = make_transfer_set(digits, fraction=0.2)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-2)

    def go(dcfg, seed=1):
        return distill(
            _student(digits, seed), [teacher], transfer, cfg, dcfg, run_dir=tmp_path,
            progress=False,
        )  # fmt: skip

    first = go(DistillConfig(temperature=4.0))
    again = go(DistillConfig(temperature=4.0), seed=2)  # finished: the checkpoint's weights
    sd1, sd2 = first.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    with pytest.raises(ValueError, match="other settings"):
        go(DistillConfig(temperature=2.0))


@pytest.mark.parametrize("online", [False, True])
@pytest.mark.parametrize("change", ["labels", "subset"])
def test_resume_refuses_another_transfer_set(tmp_path, teacher, digits, online, change):
    # The run's identity must cover the transfer set: resuming on other examples, or dropping
    # the labels (which removes the hard term from the objective), is a different run.
    first = make_transfer_set(digits, fraction=0.5, seed=0)
    other = (
        make_transfer_set(digits, fraction=0.5, seed=0, labelled=False)
        if change == "labels"
        else make_transfer_set(digits, fraction=0.5, seed=1)
    )
    assert len(other) == len(first)

    def go(transfer):
        return distill(
            _student(digits), [teacher], transfer, TrainConfig(epochs=1, batch_size=64),
            DistillConfig(online=online), run_dir=tmp_path, progress=False,
        )  # fmt: skip

    go(first)
    with pytest.raises(ValueError, match="other settings"):
        go(other)


@pytest.mark.parametrize(
    "cfg, match",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(alpha=1.2), "alpha"),
        (dict(combine="max"), "combine"),
        (dict(cache_dtype="int8"), "cache_dtype"),
        (dict(cache_topk=-1), "cache_topk"),
        (dict(teacher_weights=[1.0, 2.0]), "2 entries but there are 1 teachers"),
        (dict(teacher_weights=[-1.0]), "non-negative"),
        (dict(teacher_weights=[0.0]), "zero"),
    ],
)
def test_bad_distill_config(cfg, match):
    with pytest.raises(ValueError, match=match):
        DistillConfig(**cfg).validate(n_teachers=1)
