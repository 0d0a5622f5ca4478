"""Vectorised ensemble training: the same members as N sequential runs, in the same files."""

from __future__ import annotations

import json

import pytest
import torch

from ensemble_kd.batching import TensorBatches
from ensemble_kd.checkpoint import load_checkpoint, load_model
from ensemble_kd.data import Splits
from ensemble_kd.ensemble import ModelSpec, load_teachers, teacher_dir, train_ensemble
from ensemble_kd.io import read_jsonl
from ensemble_kd.models import build_model
from ensemble_kd.train import TrainConfig, train
from ensemble_kd.vectorized import can_vectorize, train_vectorized

N_MEMBERS = 3


def _models(seeds, widths=(16,), dropout=0.0):
    out = []
    for s in seeds:
        torch.manual_seed(s)
        out.append(build_model("mlp", (6,), 3, widths=list(widths), dropout=dropout))
    return out


def _configs(n=N_MEMBERS, **kw):
    base = dict(epochs=3, batch_size=32, lr=1e-2, schedule="cosine")
    return [TrainConfig(**{**base, **kw, "seed": 10 + k}) for k in range(n)]


def _sequential(models, cfgs, x, y, val, run_dirs=None):
    return [
        train(m, TensorBatches(x, y, batch_size=c.batch_size), c, val=val, progress=False,
              run_dir=None if run_dirs is None else run_dirs[k])
        for k, (m, c) in enumerate(zip(models, cfgs, strict=True))
    ]


def _vectorised(models, cfgs, x, y, val, **kw):
    srcs = [TensorBatches(x, y, batch_size=c.batch_size) for c in cfgs]
    return train_vectorized(models, srcs, cfgs, val=val, progress=False, **kw)


def _assert_same_weights(a, b, atol=1e-5):
    for (na, ta), (nb, tb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb
        torch.testing.assert_close(ta, tb, rtol=1e-4, atol=atol)


def test_can_vectorize():
    assert can_vectorize(_models([0, 1]))
    assert not can_vectorize(_models([0]))  # nothing to stack
    assert not can_vectorize([*_models([0]), *_models([1], widths=(8,))])
    assert not can_vectorize([*_models([0]), *_models([1], dropout=0.5)])  # other spec
    convs = [build_model("convnet", (1, 8, 8), 3, channels=[4]) for _ in range(2)]
    assert not can_vectorize(convs)  # batch-norm buffers


@pytest.mark.parametrize("optimizer,wd", [("adam", 0.0), ("sgd", 1e-3)])
def test_matches_sequential_training(blobs, optimizer, wd):
    x, y, xv, yv = blobs
    cfgs = _configs(optimizer=optimizer, weight_decay=wd)
    seeds = [0, 1, 2]
    seq = _sequential(_models(seeds), cfgs, x, y, (xv, yv))
    vec = _vectorised(_models(seeds), cfgs, x, y, (xv, yv))
    assert len(vec) == N_MEMBERS
    for s, v in zip(seq, vec, strict=True):
        _assert_same_weights(s.model, v.model)
        assert [r["epoch"] for r in v.history] == [1, 2, 3]
        assert set(v.history[0]) == set(s.history[0])  # the same record keys
        for rs, rv in zip(s.history, v.history, strict=True):
            assert rv["loss"] == pytest.approx(rs["loss"], rel=1e-4)
            assert rv["val_nll"] == pytest.approx(rs["val_nll"], rel=1e-4)
            assert rv["lr"] == pytest.approx(rs["lr"])
        assert v.best_epoch == s.best_epoch == 3
        assert not v.model.training


def test_members_keep_their_own_batches(blobs):
    # identical initial weights: members end up different only because their seeds shuffle
    # differently; with one seed for all they stay identical
    x, y, xv, yv = blobs
    same = [TrainConfig(epochs=2, batch_size=32, lr=1e-2, seed=5) for _ in range(2)]
    out = _vectorised(_models([0, 0]), same, x, y, None)
    _assert_same_weights(out[0].model, out[1].model, atol=0)
    out = _vectorised(_models([0, 0]), _configs(2, epochs=2), x, y, None)
    assert not torch.allclose(out[0].model.head.weight, out[1].model.head.weight)


def test_dropout_masks_differ_between_members(blobs):
    x, y, _, _ = blobs
    same = [TrainConfig(epochs=1, batch_size=32, lr=1e-2, seed=5) for _ in range(2)]
    out = _vectorised(_models([0, 0], dropout=0.5), same, x, y, None)
    assert not torch.allclose(out[0].model.head.weight, out[1].model.head.weight)


def test_early_stopping_matches_sequential(blobs):
    x, y, xv, yv = blobs
    # a high constant learning rate on a tiny set: validation NLL stops improving in a few epochs
    cfgs = _configs(epochs=12, lr=0.3, schedule="constant", early_stopping=2, optimizer="sgd")
    seq = _sequential(_models([0, 1, 2]), cfgs, x, y, (xv, yv))
    vec = _vectorised(_models([0, 1, 2]), cfgs, x, y, (xv, yv))
    lengths = [len(s.history) for s in seq]
    assert min(lengths) < 12  # the test really stops someone early
    for s, v in zip(seq, vec, strict=True):
        assert len(v.history) == len(s.history)
        assert v.best_epoch == s.best_epoch
        assert v.history[-1].get("stopped") == s.history[-1].get("stopped")
        _assert_same_weights(s.model, v.model, atol=1e-4)


def test_files_match_the_sequential_format_and_resume_either_way(blobs, tmp_path):
    x, y, xv, yv = blobs
    cfgs = _configs()
    dirs = [tmp_path / f"m{k}" for k in range(N_MEMBERS)]
    full = _vectorised(_models([0, 1, 2]), cfgs, x, y, (xv, yv), run_dirs=dirs)
    for k, d in enumerate(dirs):
        log = read_jsonl(d / "metrics.jsonl")
        assert log == full[k].history
        ck = load_checkpoint(d / "checkpoint.pt")
        assert ck["epoch"] == 3 and set(ck["model"]) == set(full[k].model.state_dict())
        assert ck["optimizer"]["state"][0]["exp_avg"].shape == full[k].model.body[1].weight.shape
        assert json.loads(ck["identity"])["config"] == cfgs[k].fingerprint()

    # interrupted after epoch 1, then resumed member by member by the sequential loop
    class Stop(Exception):
        pass

    def stop_after_1(epoch, records):
        if epoch == 1:
            raise Stop

    part = [tmp_path / f"p{k}" for k in range(N_MEMBERS)]
    with pytest.raises(Stop):
        _vectorised(_models([0, 1, 2]), cfgs, x, y, (xv, yv), run_dirs=part,
                    on_epoch_end=stop_after_1)
    assert all(len(read_jsonl(d / "metrics.jsonl")) == 1 for d in part)
    resumed = _sequential(_models([7, 8, 9]), cfgs, x, y, (xv, yv), run_dirs=part)
    for r, f in zip(resumed, full, strict=True):
        _assert_same_weights(r.model, f.model)
        assert len(r.history) == 3

    # and a vectorised resume of a vectorised interruption is exact
    again = [tmp_path / f"q{k}" for k in range(N_MEMBERS)]
    with pytest.raises(Stop):
        _vectorised(_models([0, 1, 2]), cfgs, x, y, (xv, yv), run_dirs=again,
                    on_epoch_end=stop_after_1)
    resumed = _vectorised(_models([7, 8, 9]), cfgs, x, y, (xv, yv), run_dirs=again)
    for r, f in zip(resumed, full, strict=True):
        _assert_same_weights(r.model, f.model, atol=0)
        assert r.history[1:] == [{**h, "seconds": r.history[i + 1]["seconds"]}
                                 for i, h in enumerate(f.history[1:])]


def test_bad_inputs(blobs):
    x, y, _, _ = blobs
    models = _models([0, 1])
    cfgs = _configs(2)
    with pytest.raises(ValueError, match=r"configs\[1\] differs .* lr"):
        _vectorised(models, [cfgs[0], TrainConfig(**{**vars(cfgs[1]), "lr": 0.5})], x, y, None)
    with pytest.raises(ValueError, match="same number"):
        srcs = [TensorBatches(x, y, batch_size=32), TensorBatches(x[:100], y[:100], batch_size=32)]
        train_vectorized(models, srcs, cfgs, progress=False)
    with pytest.raises(ValueError, match="labelled"):
        _vectorised(models, cfgs, x, None, None)
    with pytest.raises(ValueError, match="cannot be vectorised"):
        _vectorised([*_models([0]), *_models([1], widths=(4,))], cfgs, x, y, None)
    with pytest.raises(ValueError, match="early stopping needs validation"):
        _vectorised(models, _configs(2, early_stopping=1), x, y, None)


@pytest.fixture
def tiny_splits(blobs) -> Splits:
    x, y, xv, yv = blobs
    return Splits("blobs", x, y, xv, yv, xv, yv, ["a", "b", "c"])


def test_train_ensemble_vectorised_matches_sequential(tiny_splits, tmp_path):
    spec = ModelSpec("mlp", (16,), 0.0)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-2, seed=3)
    seq = train_ensemble(tiny_splits, spec, 3, cfg, tmp_path / "s", vectorize=False, progress=False)
    vec = train_ensemble(tiny_splits, spec, 3, cfg, tmp_path / "v", vectorize=True, progress=False)
    for k, (s, v) in enumerate(zip(seq, vec, strict=True)):
        _assert_same_weights(s, v)
        _, meta_s = load_model(teacher_dir(tmp_path / "s", k) / "model.pt")
        _, meta_v = load_model(teacher_dir(tmp_path / "v", k) / "model.pt")
        assert meta_v == meta_s and meta_v["seed"] == 3 + k
        log_s = read_jsonl(teacher_dir(tmp_path / "s", k) / "metrics.jsonl")
        log_v = read_jsonl(teacher_dir(tmp_path / "v", k) / "metrics.jsonl")
        assert [set(r) for r in log_v] == [set(r) for r in log_s]
    paths = sorted((tmp_path / "v").glob("teacher_*/model.pt"))
    models, metas = load_teachers(paths, splits=tiny_splits)  # readable downstream
    assert len(models) == 3 and all(m["role"] == "teacher" for m in metas)
    # finished teachers are loaded, not retrained
    again = train_ensemble(tiny_splits, spec, 3, cfg, tmp_path / "v", vectorize=True,
                           progress=False)
    for a, v in zip(again, vec, strict=True):
        _assert_same_weights(a, v, atol=0)


def test_train_ensemble_mixed_architectures_and_ranks(tiny_splits, tmp_path):
    specs = [ModelSpec("mlp", (16,), 0.0), ModelSpec("mlp", (8,), 0.0)]
    cfg = TrainConfig(epochs=1, batch_size=32, lr=1e-2)
    out = train_ensemble(tiny_splits, specs, 4, cfg, tmp_path / "e", vectorize=True,
                         progress=False)
    assert [m.spec["kwargs"]["widths"] for m in out] == [[16], [8], [16], [8]]
    # rank 1 of 2 trains teachers 1 and 3 only (already there: loaded)
    mine = train_ensemble(tiny_splits, specs, 4, cfg, tmp_path / "e", vectorize=True,
                          progress=False, ranks=(1, 2))
    assert [m.spec["kwargs"]["widths"] for m in mine] == [[8], [8]]


def test_default_vectorises_only_small_members_on_cpu(tiny_splits, tmp_path, monkeypatch):
    import ensemble_kd.ensemble as ens

    calls = []

    def spy(models, *args, **kw):
        calls.append(len(models))
        return train_vectorized(models, *args, **kw)

    monkeypatch.setattr(ens, "train_vectorized", spy)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=1e-2)
    small = ModelSpec("mlp", (16,), 0.0)  # 163 parameters
    large = ModelSpec("mlp", (256, 256), 0.0)  # 68k parameters > CPU_VECTORIZE_MAX_PARAMS
    train_ensemble(tiny_splits, small, 3, cfg, tmp_path / "a", progress=False)
    assert calls == [3]
    train_ensemble(tiny_splits, large, 2, cfg, tmp_path / "b", progress=False)
    assert calls == [3]  # sequential: slower vectorised on a CPU at this size
    train_ensemble(tiny_splits, large, 2, cfg, tmp_path / "c", progress=False, vectorize=True)
    assert calls == [3, 2]
    train_ensemble(tiny_splits, small, 2, cfg, tmp_path / "d", progress=False, vectorize=False)
    assert calls == [3, 2]
