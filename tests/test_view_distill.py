"""Distillation on augmented views: the view cache, teachers and student fed the same inputs (spies
on the forward), cached views equal online views, the fair baseline, resume, old caches valid."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ensemble_kd.batching import ViewBatches
from ensemble_kd.cache import ensure_cache
from ensemble_kd.checkpoint import load_model
from ensemble_kd.data import make_transfer_set
from ensemble_kd.distill import (
    DistillConfig,
    cached_objective,
    distill,
    online_objective,
    train_baseline,
)
from ensemble_kd.models import build_model
from ensemble_kd.predict import predict_logits
from ensemble_kd.train import TrainConfig
from ensemble_kd.views import ViewConfig, make_views

FIXTURE = Path(__file__).parent / "fixtures" / "run_v0_1_0" / "complete"
VIEWS = ViewConfig(shift=1, mixup=0.4, views=3, seed=11)
TRAIN = TrainConfig(epochs=2, batch_size=32, lr=1e-2, seed=5)


class Spy(nn.Module):
    """A model that records every input of its forward (a copy), then runs the model."""

    def __init__(self, inner: nn.Module, *, training_only: bool = False):
        super().__init__()
        self.inner, self.training_only, self.seen = inner, training_only, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.training_only:
            self.seen.append(x.detach().clone())
        return self.inner(x)


def _teachers(digits, k: int = 2) -> list[nn.Module]:
    torch.manual_seed(5)
    return [build_model("mlp", digits.input_shape, 10, widths=[16]).eval() for _ in range(k)]


def _student(digits) -> nn.Module:
    torch.manual_seed(1)
    return build_model("mlp", digits.input_shape, 10, widths=[8])


@pytest.fixture(scope="module")
def transfer(digits):
    return make_transfer_set(digits, fraction=0.1)  # 128 examples: 4 batches of 32


def test_plain_views_keep_the_0_1_0_cache_and_its_fingerprint(tmp_path, digits):
    # the cache of a run made by ensemble-kd 0.1.0, from its two teachers on the digits train split
    teachers = [load_model(FIXTURE / "teachers" / f"teacher_{k}" / "model.pt")[0] for k in range(2)]
    folder = shutil.copytree(FIXTURE / "student" / "cache", tmp_path / "cache")
    written = (folder / "logits.npy").stat().st_mtime_ns
    for views in (None, ViewConfig(), ViewConfig(seed=9)):  # plain views: the same cache
        cache = ensure_cache(teachers, digits.x_train, folder, views=views)
        assert cache.fingerprint == "955aac702afd083da11658ac88da4354aca9356ddaf27a26a54f4fe719ed9fa9"
        assert (folder / "logits.npy").stat().st_mtime_ns == written  # reused, not rebuilt
        assert "views" not in cache.meta and cache.n_views == 1


def test_view_cache_rows_are_the_teachers_on_the_regenerated_views(tmp_path, digits, transfer):
    spies = [Spy(t) for t in _teachers(digits)]
    cache = ensure_cache(spies, transfer.x, tmp_path / "c", views=VIEWS)
    n = len(transfer)
    assert cache.shape == (2, 3 * n, 10) and cache.n_views == 3 and cache.meta["views"] == VIEWS.as_dict()
    # what the teachers were fed, row v * N + i, is view v of example i regenerated from its key
    fed = torch.cat([x for x in spies[1].seen if len(x) > 1])
    rows = torch.arange(3 * n)
    assert torch.equal(fed, make_views(transfer.x, rows % n, rows // n, VIEWS)[0])
    idx, view = torch.tensor([5, 0, 77, 5]), torch.tensor([2, 0, 1, 1])
    xv = make_views(transfer.x, idx, view, VIEWS)[0]
    direct = torch.stack([predict_logits(t.inner, xv) for t in spies])  # (K, B, C)
    torch.testing.assert_close(cache.batch(cache.rows(idx, view)), direct, rtol=1e-5, atol=1e-6)


def test_view_cache_is_rebuilt_when_its_settings_change(tmp_path, digits, transfer):
    teachers, folder = _teachers(digits), tmp_path / "c"
    first = ensure_cache(teachers, transfer.x, folder, views=VIEWS).fingerprint
    again = ensure_cache(teachers, transfer.x, folder, views=ViewConfig(**VIEWS.as_dict()))
    assert again.fingerprint == first
    seen = {first}
    for change in (dict(seed=12), dict(views=2), dict(mixup=0.5), dict(flip=True)):
        cache = ensure_cache(teachers, transfer.x, folder, views=ViewConfig(**{**VIEWS.as_dict(), **change}))
        assert cache.fingerprint not in seen and cache.meta["views"] == {**VIEWS.as_dict(), **change}
        seen.add(cache.fingerprint)
    with pytest.raises(ValueError, match="other views"):  # an objective for other views refuses it
        cached_objective(cache, DistillConfig(views=VIEWS))
    with pytest.raises(ValueError, match="other views"):
        cached_objective(cache, DistillConfig())


def test_cached_views_equal_online_views(tmp_path, digits, transfer):
    teachers = _teachers(digits)
    cfg = DistillConfig(temperature=2.0, alpha=0.6, views=VIEWS)
    cached = cached_objective(ensure_cache(teachers, transfer.x, tmp_path / "c", views=VIEWS), cfg)
    online = online_objective(teachers, cfg)
    student = _student(digits)
    for seed in range(2):
        for batch in ViewBatches(transfer.x, transfer.y, views=VIEWS, batch_size=32).epoch(
            torch.Generator().manual_seed(seed)
        ):
            logits = student(batch.x)
            a, b = cached(logits, batch), online(logits, batch)
            for u, v in [(a.loss, b.loss), (a.soft, b.soft), (a.hard, b.hard)]:
                torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)
            # the hard term is against the mixed labels: lam CE(y) + (1 - lam) CE(partner's y)
            lam = batch.mix.lam
            mixed = (lam * F.cross_entropy(logits, batch.y, reduction="none")
                     + (1 - lam) * F.cross_entropy(logits, batch.mix.partner_y, reduction="none"))
            torch.testing.assert_close(a.hard, mixed.mean())
    histories = [
        distill(_student(digits), teachers, transfer, TRAIN, DistillConfig(views=VIEWS, online=o),
                cache_dir=tmp_path / "c", progress=False).history
        for o in (False, True)
    ]
    for ra, rb in zip(*histories, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4)


@pytest.mark.parametrize("online, views", [(False, VIEWS), (True, VIEWS),
                                          (True, ViewConfig(shift=1, mixup=0.4, views=None))])
def test_teachers_and_student_receive_identical_inputs(tmp_path, digits, transfer, online, views):
    teachers = [Spy(t) for t in _teachers(digits)]
    student = Spy(_student(digits), training_only=True)
    distill(student, teachers, transfer, TRAIN, DistillConfig(views=views, online=online),
            cache_dir=tmp_path / "c", progress=False)
    steps = student.seen
    assert len(steps) == TRAIN.epochs * 4
    raw = {r.numpy().tobytes() for r in transfer.x}
    assert sum(r.numpy().tobytes() not in raw for s in steps for r in s) > 0.9 * 256  # augmented
    for t in teachers:
        assert torch.equal(t.seen[0], transfer.x[:2])  # the class-count probe, before training
        if online:  # the teachers ran on each step's batch: the student's very input
            assert len(t.seen) == 1 + len(steps)
            assert all(torch.equal(a, b) for a, b in zip(t.seen[1:], steps, strict=True))
        else:  # every input the student saw is a row the teachers' cache was computed on
            cached = {r.numpy().tobytes() for x in t.seen[1:] for r in x}
            assert all(r.numpy().tobytes() in cached for s in steps for r in s)


def test_the_baseline_sees_the_distilled_students_inputs(tmp_path, digits, transfer):
    student, baseline = Spy(_student(digits), training_only=True), Spy(_student(digits), training_only=True)
    distill(student, _teachers(digits), transfer, TRAIN, DistillConfig(views=VIEWS),
            cache_dir=tmp_path / "c", progress=False)
    result = train_baseline(baseline, transfer, TRAIN, views=VIEWS, run_dir=tmp_path / "b", progress=False)
    assert len(baseline.seen) == len(student.seen) == TRAIN.epochs * 4
    assert all(torch.equal(a, b) for a, b in zip(baseline.seen, student.seen, strict=True))
    assert all(r["soft"] == 0 and r["hard"] > 0 for r in result.history)
    with pytest.raises(ValueError, match="labelled"):
        train_baseline(_student(digits), make_transfer_set(digits, fraction=0.1, labelled=False), TRAIN)


class Stop(Exception):
    pass


@pytest.mark.parametrize("online", [False, True])
def test_resume_after_an_interruption_is_bit_identical_with_views(tmp_path, digits, transfer, online):
    cfg, teachers = DistillConfig(views=VIEWS, online=online), _teachers(digits)
    train_cfg = TrainConfig(epochs=3, batch_size=32, lr=1e-2, seed=5)

    def go(folder, on_epoch_end=None):
        return distill(_student(digits), teachers, transfer, train_cfg, cfg, run_dir=folder,
                       progress=False, on_epoch_end=on_epoch_end).model

    def stop_after_one(record):
        if record["epoch"] == 1:
            raise Stop

    whole = go(tmp_path / "whole")
    with pytest.raises(Stop):
        go(tmp_path / "cut", stop_after_one)
    resumed = go(tmp_path / "cut")
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_equal_settings_of_other_number_types_are_one_cache():
    from ensemble_kd.cache import cache_fingerprint

    a = ViewConfig(shift=1, mixup=1, noise=0, views=2)
    b = ViewConfig(shift=1, mixup=1.0, noise=0.0, views=2)
    assert cache_fingerprint("t", "x", "float32", 0, a) == cache_fingerprint("t", "x", "float32", 0, b)
    assert cache_fingerprint("t", "x", "float32", 0, a) != cache_fingerprint("t", "x", "float32", 0)


def test_views_are_part_of_a_runs_identity_and_plain_views_are_not(tmp_path, digits, transfer):
    teachers = _teachers(digits)
    one = TrainConfig(epochs=1, batch_size=32)

    def go(views):
        return distill(_student(digits), teachers, transfer, one, DistillConfig(views=views),
                       run_dir=tmp_path, progress=False)

    go(None)
    go(ViewConfig(seed=4))  # plain views: the same run, already finished, resumes
    with pytest.raises(ValueError, match="other settings"):
        go(VIEWS)
