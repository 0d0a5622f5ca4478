"""Dustbin specialists: building from the generalist, training, correction, save/load, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import specialists.training as training_mod
from ensemble_kd.batching import Batch, TensorBatches
from ensemble_kd.checkpoint import load_checkpoint, save_model
from ensemble_kd.data import Splits
from ensemble_kd.io import FormatError, read_jsonl
from ensemble_kd.models import build_model, model_from_spec
from ensemble_kd.train import TrainConfig, train
from specialists.specialist import (
    load_specialist,
    load_specialists,
    save_specialist,
    specialist_probs,
    train_specialists,
)
from specialists.subsets import fold_logits
from specialists.training import (
    SpecialistConfig,
    build_specialist,
    mean_head_input,
    specialist_objective,
    train_specialist,
)

N_CLASSES, DIM = 10, 8
SUBSET = [7, 2]  # 20% of the (balanced) data; deliberately not in ascending order


def _blobs(n_per_class: int, means: torch.Tensor, g: torch.Generator):
    y = torch.arange(N_CLASSES).repeat(n_per_class)  # (N,) balanced
    x = means[y] + torch.randn(len(y), DIM, generator=g)  # (N, D)
    return x.float(), y.long()


@pytest.fixture(scope="module")
def splits() -> Splits:
    g = torch.Generator().manual_seed(0)
    means = 3.0 * torch.randn(N_CLASSES, DIM, generator=g)  # (C, D)
    x_tr, y_tr = _blobs(60, means, g)
    x_va, y_va = _blobs(10, means, g)
    x_te, y_te = _blobs(30, means, g)
    return Splits("blobs", x_tr, y_tr, x_va, y_va, x_te, y_te, [f"c{i}" for i in range(N_CLASSES)])


@pytest.fixture(scope="module")
def generalist(splits):
    torch.manual_seed(0)
    model = build_model("mlp", (DIM,), N_CLASSES, widths=[32])
    batches = TensorBatches(splits.x_train, splits.y_train, batch_size=32)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=1e-2)
    return train(model, batches, cfg, progress=False).model


TRAIN_CFG = TrainConfig(epochs=4, batch_size=32, lr=3e-3)


@pytest.fixture(scope="module")
def trained(generalist, splits, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("spec")
    sp = train_specialist(
        generalist,
        SUBSET,
        splits,
        TRAIN_CFG,
        SpecialistConfig(share=0.5, alpha=0.5),
        run_dir=run_dir,
        progress=False,
    )
    return sp, run_dir


# ---- building ----


def test_build_specialist_copies_body_and_subset_rows(generalist):
    sp = build_specialist(generalist, SUBSET)
    assert sp.head.out_features == len(SUBSET) + 1
    assert sp.spec["head_out"] == 3 and sp.spec["n_classes"] == N_CLASSES
    torch.testing.assert_close(sp.head.weight[:2], generalist.head.weight[SUBSET])
    torch.testing.assert_close(sp.head.bias[:2], generalist.head.bias[SUBSET])
    for (name, p), (_, q) in zip(
        sp.body.named_parameters(), generalist.body.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, msg=name)
    x = torch.randn(5, DIM)
    torch.testing.assert_close(sp(x)[:, :2], generalist(x)[:, SUBSET])
    # a deep copy: training the specialist must not touch the generalist
    with torch.no_grad():
        sp.body[1].weight += 1.0
    assert not torch.equal(sp.body[1].weight, generalist.body[1].weight)


def test_dustbin_row_without_anchor_is_tangent_at_zero(generalist):
    sp = build_specialist(generalist, SUBSET)
    others = [c for c in range(N_CLASSES) if c not in SUBSET]
    w, b = generalist.head.weight.detach().double(), generalist.head.bias.detach().double()
    pi = torch.softmax(b[others], 0)
    torch.testing.assert_close(sp.head.weight[2].double(), pi @ w[others], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        sp.head.bias[2].double(), torch.logsumexp(b[others], 0), rtol=1e-5, atol=1e-6
    )


def test_dustbin_row_with_anchor_is_exact_at_mean_feature_and_a_lower_bound(generalist, splits):
    sp = build_specialist(generalist, SUBSET, anchor_x=splits.x_train)
    others = [c for c in range(N_CLASSES) if c not in SUBSET]
    h0 = mean_head_input(generalist, splits.x_train).float()  # (D,)
    exact = torch.logsumexp(generalist.head(h0)[others], 0)
    torch.testing.assert_close(sp.head(h0)[2], exact, rtol=1e-5, atol=1e-5)
    # elsewhere the tangent plane of a convex function lies below it
    with torch.no_grad():
        feats = generalist.body(splits.x_test)  # (N, D)
        folded = torch.logsumexp(generalist.head(feats)[:, others], 1)
        assert (sp.head(feats)[:, 2] <= folded + 1e-4).all()


def test_mean_head_input_matches_body_mean(generalist, splits):
    with torch.no_grad():
        want = generalist.body(splits.x_val).double().mean(0)
    torch.testing.assert_close(mean_head_input(generalist, splits.x_val, batch_size=7), want)


@pytest.mark.parametrize(
    "subset, match",
    [
        ([2, 12], "subset contains class 12 but there are only 10 classes"),
        (list(range(10)), "dustbin"),
        ([3], "at least 2"),
        ([3, 3], "more than once"),
    ],
)
def test_build_specialist_rejects_bad_subset(generalist, subset, match):
    with pytest.raises(ValueError, match=match):
        build_specialist(generalist, subset)


def test_spec_rebuilds_the_specialist(generalist):
    sp = build_specialist(generalist, SUBSET)
    rebuilt = model_from_spec(sp.spec)
    rebuilt.load_state_dict(sp.state_dict())
    x = torch.randn(4, DIM)
    torch.testing.assert_close(rebuilt.eval()(x), sp(x))


# ---- the objective ----


def test_objective_known_answers():
    g = torch.Generator().manual_seed(1)
    folded = torch.randn(6, 3, generator=g)  # (N, |S|+1)
    targets = torch.tensor([0, 1, 2, 2, 0, 2])
    idx = torch.tensor([4, 1, 3])
    batch = Batch(torch.zeros(3, DIM), torch.zeros(3, dtype=torch.long), idx)
    cfg = SpecialistConfig(alpha=0.25, temperature=3.0)
    # logits equal to the folded generalist: the soft term vanishes, only (1 - alpha) * CE is left
    parts = specialist_objective(targets, folded, cfg)(folded[idx], batch)
    ce = F.cross_entropy(folded[idx], targets[idx])
    assert float(parts.soft) == pytest.approx(0.0, abs=1e-6)
    assert float(parts.loss) == pytest.approx(0.75 * float(ce), rel=1e-6)
    # alpha = 0: plain cross-entropy on the dustbin targets
    z = torch.randn(3, 3, generator=g)
    parts = specialist_objective(targets, None, SpecialistConfig(alpha=0.0))(z, batch)
    assert float(parts.loss) == pytest.approx(float(F.cross_entropy(z, targets[idx])), rel=1e-6)
    assert float(parts.soft) == 0.0


def test_online_objective_equals_precomputed(generalist, splits):
    cfg = SpecialistConfig(alpha=0.7, temperature=2.5)
    x = splits.x_train[:20]
    targets = torch.arange(20) % 3
    with torch.no_grad():
        folded = fold_logits(generalist(x), SUBSET, cfg.temperature)
    idx = torch.tensor([3, 11, 0, 19])
    batch = Batch(x[idx], None, idx)
    z = torch.randn(4, 3)
    a = specialist_objective(targets, folded, cfg)(z, batch)
    b = specialist_objective(targets, None, cfg, generalist=generalist, subset=SUBSET)(z, batch)
    torch.testing.assert_close(a.loss, b.loss)


# ---- training ----


def test_dustbin_correction_is_fitted_on_validation_with_soft_targets(trained, splits):
    sp, run_dir = trained
    assert sp.subset == SUBSET
    # alpha = 0.5: the bias is fitted on the validation split, where at the optimum the mean
    # p(dustbin) equals the dustbin's share of the split (80%)
    assert sp.calibration == "fitted_on_validation"
    with torch.no_grad():
        p_dust = sp.model(splits.x_val).double().softmax(1)[:, -1].mean()
    assert float(p_dust) == pytest.approx(0.8, abs=1e-5)
    # the returned model's dustbin bias = the trained (checkpointed) bias + the correction
    ck = load_checkpoint(run_dir / "checkpoint.pt")["model"]
    assert sp.model.head.bias[-1].item() == pytest.approx(
        float(ck["head.bias"][-1]) + sp.dustbin_correction, abs=1e-6
    )
    torch.testing.assert_close(sp.model.head.bias[:-1].detach(), ck["head.bias"][:-1])


def test_trained_specialist_beats_chance_on_its_subset(trained, splits):
    sp, run_dir = trained
    assert len(sp.history) == 4 and "val_acc" in sp.history[-1]
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 4
    with torch.no_grad():
        logits = sp.model(splits.x_test)  # (N, 3)
    inside = torch.isin(splits.y_test, torch.tensor(SUBSET))
    truth = torch.tensor([SUBSET.index(c) for c in splits.y_test[inside].tolist()])
    acc_in = (logits[inside, :2].argmax(1) == truth).float().mean()
    assert acc_in > 0.9  # chance is 0.5
    # in its own label space (dustbin included) it is right far more often than chance (1/3)
    full_acc = (logits.argmax(1) == training_mod.specialist_targets(splits.y_test, SUBSET)).float().mean()
    assert full_acc > 0.9


def test_training_lifts_a_specialist_from_chance(splits):
    # from an untrained generalist the specialist starts at chance on its subset and always says
    # "dustbin"; training on the half-and-half mix must teach it both
    torch.manual_seed(1)
    raw = build_model("mlp", (DIM,), N_CLASSES, widths=[32])
    inside = torch.isin(splits.y_test, torch.tensor(SUBSET))
    truth = torch.tensor([SUBSET.index(c) for c in splits.y_test[inside].tolist()])
    targets = training_mod.specialist_targets(splits.y_test, SUBSET)

    def accuracies(model):
        with torch.no_grad():
            logits = model(splits.x_test)  # (N, 3)
        subset_acc = (logits[inside, :2].argmax(1) == truth).float().mean()
        return float(subset_acc), float((logits.argmax(1) == targets).float().mean())

    before = accuracies(build_specialist(raw, SUBSET, anchor_x=splits.x_train))
    assert before[0] < 0.65 and before[1] < 0.81  # chance on S; the dustbin is 80% of the data
    sp = train_specialist(
        raw,
        SUBSET,
        splits,
        TrainConfig(epochs=4, batch_size=32, lr=1e-2),
        SpecialistConfig(alpha=0.0),
        progress=False,
    )
    after = accuracies(sp.model)
    assert after[0] > 0.95 and after[1] > 0.95
    # hard labels: the closed-form prior shift, log(0.8 / 0.5) + log(0.5 / 0.2) = log 4
    assert sp.calibration == "prior_shift"
    assert sp.dustbin_correction == pytest.approx(math.log(4.0))


def test_freeze_body_trains_only_the_head(generalist, splits):
    cfg = SpecialistConfig(freeze_body=True, alpha=0.0)
    sp = train_specialist(
        generalist, SUBSET, splits, TrainConfig(epochs=1, batch_size=32), cfg, progress=False
    )
    for p, q in zip(sp.model.body.parameters(), generalist.body.parameters(), strict=True):
        assert torch.equal(p, q)
    start = build_specialist(generalist, SUBSET, anchor_x=splits.x_train)
    assert not torch.allclose(sp.model.head.weight, start.head.weight)
    assert all(p.requires_grad for p in sp.model.parameters())


def test_jittered_images_run_the_generalist_online(splits):
    # jitter needs images: view the 8 features as a 1 x 2 x 4 image
    img = Splits(
        "img",
        *(
            t.reshape(-1, 1, 2, 4) if t.is_floating_point() else t
            for t in (
                splits.x_train,
                splits.y_train,
                splits.x_val,
                splits.y_val,
                splits.x_test,
                splits.y_test,
            )
        ),
        splits.class_names,
    )
    torch.manual_seed(0)
    gen = build_model("mlp", (1, 2, 4), N_CLASSES, widths=[16])
    sp = train_specialist(
        gen,
        SUBSET,
        img,
        TrainConfig(epochs=1, batch_size=32),
        SpecialistConfig(jitter=1, alpha=0.5),
        progress=False,
    )
    assert sp.calibration == "fitted_on_validation" and math.isfinite(sp.dustbin_correction)
    assert math.isfinite(sp.history[0]["soft"]) and sp.history[0]["soft"] > 0


def test_train_specialist_rejects_bad_config(generalist, splits):
    with pytest.raises(ValueError, match="share"):
        train_specialist(generalist, SUBSET, splits, TRAIN_CFG, SpecialistConfig(share=1.0))
    with pytest.raises(ValueError, match="class 10 but there are only 10"):
        train_specialist(generalist, [1, 10], splits, TRAIN_CFG)
    keep = splits.y_train < 8  # classes 8 and 9 never seen in training
    partial = Splits(
        "partial",
        splits.x_train[keep],
        splits.y_train[keep],
        splits.x_val,
        splits.y_val,
        splits.x_test,
        splits.y_test,
        splits.class_names,
    )
    with pytest.raises(ValueError, match=r"subset \[8, 9\] has no examples in the training data"):
        train_specialist(generalist, [8, 9], partial, TRAIN_CFG)


# ---- saving, loading, predicting ----


def test_save_load_round_trip(trained, splits, tmp_path):
    sp, _ = trained
    path = tmp_path / "sp.pt"
    save_specialist(path, sp, {"class_names": splits.class_names, "data_fingerprint": "abc"})
    back = load_specialist(path)
    assert back.subset == SUBSET
    assert back.dustbin_correction == pytest.approx(sp.dustbin_correction)
    assert back.history == sp.history
    assert back.calibration == sp.calibration == "fitted_on_validation"
    assert back.meta["data_fingerprint"] == "abc" and back.meta["role"] == "specialist"
    torch.testing.assert_close(back.model(splits.x_test), sp.model(splits.x_test))
    assert back.model.head.bias[-1].item() == pytest.approx(sp.model.head.bias[-1].item())


def test_load_rejects_head_size_mismatch_and_non_specialists(trained, generalist, tmp_path):
    sp, _ = trained
    bad = tmp_path / "bad.pt"
    save_model(bad, sp.model, {"subset": [1, 2, 3], "dustbin_correction": 0.1})
    with pytest.raises(FormatError, match="head has 3 outputs but the subset has 3 classes"):
        load_specialist(bad)
    # written before the calibration was recorded: loads, and says so
    old = tmp_path / "old.pt"
    save_model(old, sp.model, {"subset": SUBSET, "dustbin_correction": 0.47})
    assert load_specialist(old).calibration == "unrecorded"
    plain = tmp_path / "plain.pt"
    save_model(plain, generalist, {})
    with pytest.raises(FormatError, match="not a specialist"):
        load_specialist(plain)


def test_specialist_probs(trained, splits):
    sp, _ = trained
    (p,) = specialist_probs([sp], splits.x_val)
    assert p.shape == (len(splits.y_val), 3)
    torch.testing.assert_close(p.sum(1), torch.ones(len(p)))
    torch.testing.assert_close(p, torch.softmax(sp.model(splits.x_val), 1))


# ---- several specialists: resume, ranks ----


SUBSETS = [[2, 7], [0, 5, 9]]
SMALL_CFG = TrainConfig(epochs=2, batch_size=32, lr=3e-3)


def test_train_specialists_writes_folders_and_resumes(generalist, splits, tmp_path, monkeypatch):
    out = tmp_path / "specs"
    first = train_specialists(generalist, SUBSETS, splits, SMALL_CFG, None, out, progress=False)
    assert [s.subset for s in first] == SUBSETS
    manifest = json.loads((out / "subsets.json").read_text())
    assert manifest["subsets"] == SUBSETS
    assert manifest["subset_names"] == [["c2", "c7"], ["c0", "c5", "c9"]]
    assert manifest["class_names"] == splits.class_names
    for m in range(2):
        assert (out / f"specialist_{m}" / "model.pt").exists()
        assert len(read_jsonl(out / f"specialist_{m}" / "metrics.jsonl")) == 2
    assert [s.calibration for s in first] == ["prior_shift"] * 2  # the default: hard labels
    stamps = {
        p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix != ".json"
    }

    def no_training(*args, **kwargs):
        raise AssertionError("a finished specialist was trained again")

    monkeypatch.setattr(training_mod, "train", no_training)
    again = train_specialists(generalist, SUBSETS, splits, SMALL_CFG, None, out, progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    for a, b in zip(first, again, strict=True):
        assert a.subset == b.subset and a.dustbin_correction == pytest.approx(b.dustbin_correction)
        assert a.calibration == b.calibration
        torch.testing.assert_close(a.model(splits.x_val), b.model(splits.x_val))
    loaded = load_specialists(out)
    assert [s.subset for s in loaded] == SUBSETS
    monkeypatch.undo()

    # killed after the last checkpoint but before model.pt: finishes without another epoch
    (out / "specialist_0" / "model.pt").unlink()
    redone = train_specialists(generalist, SUBSETS, splits, SMALL_CFG, None, out, progress=False)
    assert len(read_jsonl(out / "specialist_0" / "metrics.jsonl")) == 2
    torch.testing.assert_close(redone[0].model(splits.x_val), first[0].model(splits.x_val))

    with pytest.raises(ValueError, match="other subsets"):
        train_specialists(generalist, [[2, 7], [0, 5]], splits, SMALL_CFG, None, out)


def test_train_specialists_ranks_split_the_work(generalist, splits, tmp_path):
    out = tmp_path / "ranked"
    mine = train_specialists(
        generalist, SUBSETS, splits, SMALL_CFG, None, out, progress=False, ranks=(1, 2)
    )
    assert [s.subset for s in mine] == [SUBSETS[1]]
    assert not (out / "specialist_0").exists()
    assert (out / "specialist_1" / "model.pt").exists()
    with pytest.raises(FileNotFoundError, match="no subsets.json"):  # rank 0 writes the manifest
        load_specialists(out)
    theirs = train_specialists(
        generalist, SUBSETS, splits, SMALL_CFG, None, out, progress=False, ranks=(0, 2)
    )
    assert [s.subset for s in theirs] == [SUBSETS[0]]
    assert [s.subset for s in load_specialists(out)] == SUBSETS
    (out / "specialist_0" / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="specialist 0 has not been trained"):
        load_specialists(out)
    with pytest.raises(ValueError, match="ranks"):
        train_specialists(generalist, SUBSETS, splits, SMALL_CFG, None, out, ranks=(2, 2))


def test_train_specialists_validates_subsets(generalist, splits, tmp_path):
    with pytest.raises(ValueError, match=r"subsets\[1\] contains class 12 but there are only 10"):
        train_specialists(generalist, [[0, 1], [2, 12]], splits, SMALL_CFG, None, tmp_path)
