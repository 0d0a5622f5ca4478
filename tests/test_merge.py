"""Specialists distilled back into one model: the q-cache, the merged model, its control, the report."""

from __future__ import annotations

import copy
import importlib

import numpy as np
import pytest
import torch

from ensemble_kd.cache import open_cache
from ensemble_kd.data import TransferSet, load_dataset, make_transfer_set
from ensemble_kd.ensemble import ModelSpec, train_ensemble
from ensemble_kd.metrics import kl_divergence, paired_bootstrap
from ensemble_kd.models import build_model, count_parameters
from ensemble_kd.predict import predict_logits
from ensemble_kd.train import TrainConfig, default_objective
from ensemble_kd.views import ViewConfig, make_views
from specialists import (
    CombinedModel,
    MergeConfig,
    Specialist,
    SpecialistConfig,
    build_specialist,
    distill_specialists,
    evaluate_merge,
    format_merge_report,
    train_specialists,
)
from specialists.merge_report import gain_kept

# the module, not the function of the same name that ensemble_kd exports
distill_module = importlib.import_module("ensemble_kd.distill")

FAST = TrainConfig(epochs=2, batch_size=64, lr=3e-3, seed=0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A generalist and one specialist on synthetic data with two planted groups of 3 classes."""
    root = tmp_path_factory.mktemp("merge")
    splits = load_dataset("synthetic", val_fraction=0.2, seed=0, n_classes=6, n_groups=2,
                          n_train=1200, synthetic_seed=0)
    torch.manual_seed(0)
    (gen,) = train_ensemble(splits, ModelSpec("mlp", (32,), 0.0), 1,
                            TrainConfig(epochs=3, batch_size=64, lr=3e-3), root / "teachers")
    specs = train_specialists(gen, [splits.groups[0]], splits, TrainConfig(epochs=2, batch_size=64,
                              lr=3e-3), SpecialistConfig(), root / "specialists")
    return {"splits": splits, "gen": gen.eval(), "specs": specs,
            "transfer": make_transfer_set(splits, seed=0)}


def _probs(model, x):
    return torch.softmax(predict_logits(model, x), -1)


def test_without_active_specialists_q_and_its_cache_are_the_generalist(tmp_path):
    torch.manual_seed(0)
    gen = build_model("mlp", (5,), 4, widths=(8,)).eval()
    with torch.no_grad():
        gen.head.bias[0] = 50.0  # class 0 is always the top class
    spec = Specialist(build_specialist(gen, [1, 2]), [1, 2], 0.0)  # never active at top_n = 1
    x = torch.randn(40, 5)
    transfer = TransferSet(x, None, torch.arange(40))
    p_g = _probs(gen, x)
    q = torch.softmax(CombinedModel(gen, [spec.model], [[1, 2]], top_n=1)(x), -1)
    torch.testing.assert_close(q, p_g, rtol=1e-6, atol=1e-7)

    distill_specialists(gen, [spec], transfer, TrainConfig(epochs=1, batch_size=16),
                        MergeConfig(alpha=1.0), tmp_path)
    with open_cache(tmp_path / "q_cache") as cache:
        cached = torch.softmax(cache.all()[0], -1)  # (N, C)
    torch.testing.assert_close(cached, p_g, rtol=1e-6, atol=1e-7)


def test_merged_model_moves_toward_q_and_keeps_the_generalists_size(setup, tmp_path):
    s, gen, specs, transfer = setup["splits"], setup["gen"], setup["specs"], setup["transfer"]
    res = distill_specialists(gen, specs, transfer, TrainConfig(epochs=4, batch_size=64, lr=3e-3),
                              MergeConfig(temperature=1.0, alpha=1.0), tmp_path)
    q = torch.softmax(predict_logits(res.combined, transfer.x), -1)
    before = kl_divergence(q, _probs(gen, transfer.x))
    after = kl_divergence(q, _probs(res.merged, transfer.x))
    assert before > 0 and after < 0.8 * before
    assert count_parameters(res.merged) == count_parameters(gen)
    assert res.merged.spec == gen.spec
    # the generalist itself is left as it was
    torch.testing.assert_close(_probs(gen, s.x_val), _probs(setup["gen"], s.x_val))


@pytest.mark.parametrize("control", ["self", "labels"])
def test_control_starts_from_the_generalist_and_sees_the_merged_models_batches(
        setup, tmp_path, monkeypatch, control):
    seen = []
    real_train = distill_module.train

    def spy(model, batches, config, **kw):
        objective = kw.get("objective", default_objective)
        record = {"start": copy.deepcopy(model.state_dict()), "idx": []}
        seen.append(record)

        def watched(logits, batch):
            record["idx"].append(batch.idx.clone())
            return objective(logits, batch)

        return real_train(model, batches, config, **{**kw, "objective": watched})

    monkeypatch.setattr(distill_module, "train", spy)
    distill_specialists(setup["gen"], setup["specs"], setup["transfer"], FAST,
                        MergeConfig(control=control), tmp_path)
    merged, ctrl = seen
    for k, v in setup["gen"].state_dict().items():
        assert torch.equal(merged["start"][k], v) and torch.equal(ctrl["start"][k], v)
    assert len(merged["idx"]) == len(ctrl["idx"]) > 0
    assert all(torch.equal(a, b) for a, b in zip(merged["idx"], ctrl["idx"], strict=True))


def test_a_finished_merge_is_loaded_and_other_models_are_refused_without_writing(setup, tmp_path):
    gen, specs, transfer = setup["gen"], setup["specs"], setup["transfer"]
    first = distill_specialists(gen, specs, transfer, FAST, None, tmp_path)
    again = distill_specialists(gen, specs, transfer, FAST, None, tmp_path)  # loads, no training
    for a, b in zip(first.merged.state_dict().values(), again.merged.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)

    other = copy.deepcopy(specs[0])
    with torch.no_grad():
        other.model.head.bias[-1] += 1.0  # another specialist: another q

    def files():
        return {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    before = files()
    with pytest.raises(ValueError, match="trained from other models"):  # the finished merge
        distill_specialists(gen, [other], transfer, FAST, None, tmp_path)
    assert files() == before
    (tmp_path / "model" / "model.pt").unlink()  # as if killed: only the checkpoint is left
    before = files()
    with pytest.raises(ValueError, match="q-cache was computed from other models"):
        distill_specialists(gen, [other], transfer, FAST, None, tmp_path)
    assert files() == before


def test_a_stale_q_cache_without_a_merge_on_it_is_rebuilt(setup, tmp_path):
    gen, specs, transfer = setup["gen"], setup["specs"], setup["transfer"]
    one = TrainConfig(epochs=1, batch_size=64)
    distill_specialists(gen, specs, transfer, one, None, tmp_path / "a")
    other = copy.deepcopy(specs[0])
    with torch.no_grad():
        other.model.head.bias[-1] += 1.0
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "q_cache").rename(tmp_path / "b" / "q_cache")
    res = distill_specialists(gen, [other], transfer, one, None, tmp_path / "b")
    with open_cache(tmp_path / "b" / "q_cache", res.q_fingerprint) as cache:
        q = torch.softmax(cache.all()[0], -1)
    torch.testing.assert_close(q, torch.softmax(predict_logits(res.combined, transfer.x), -1))


def _bad(setup, **change):
    args = {"generalist": setup["gen"], "specialists": setup["specs"],
            "transfer": setup["transfer"], "train_config": FAST, "config": MergeConfig()}
    return {**args, **change}


@pytest.mark.parametrize(("change", "match"), [
    ({"specialists": []}, "no specialists"),
    ({"transfer": TransferSet(torch.zeros(0, 20), None, torch.zeros(0, dtype=torch.long))},
     "transfer set is empty"),
    ({"config": MergeConfig(control="labels")}, None),  # labelled: fine, checked below
    ({"config": MergeConfig(control="teachers")}, "needs the teachers"),
    ({"config": MergeConfig(alpha=1.5)}, "alpha"),
])
def test_bad_input_is_one_clear_error_and_writes_nothing(setup, tmp_path, change, match):
    kwargs = _bad(setup, **change)
    if match is None:
        unlabelled = TransferSet(setup["transfer"].x, None, setup["transfer"].indices)
        kwargs["transfer"] = unlabelled
        match = "needs a labelled transfer set"
    with pytest.raises(ValueError, match=match):
        distill_specialists(**kwargs, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_invalid_subsets_are_refused(setup, tmp_path):
    sp = setup["specs"][0]
    bad = Specialist(sp.model, [0, 99, 1][: len(sp.subset)], 0.0)
    with pytest.raises(ValueError, match="99|subset"):
        distill_specialists(**_bad(setup, specialists=[bad]), out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_report_scores_the_four_systems_and_the_share_kept(setup, tmp_path):
    s = setup["splits"]
    res = distill_specialists(setup["gen"], setup["specs"], setup["transfer"], FAST, None, tmp_path)
    rep = evaluate_merge(setup["gen"], setup["specs"], res.merged, res.control, s.x_test, s.y_test,
                         n_resamples=200)
    acc = np.array([rep["systems"][k]["accuracy"] for k in ("generalist", "control", "combined",
                                                            "merged")])
    if acc[2] > acc[1]:
        assert rep["gain_kept"]["estimate"] == pytest.approx((acc[3] - acc[1]) / (acc[2] - acc[1]))
    else:
        assert rep["gain_kept"]["estimate"] is None
    assert rep["systems"]["merged"]["params"] == rep["systems"]["generalist"]["params"]
    assert rep["inference_params"]["combined"] > rep["inference_params"]["merged"]
    assert rep["systems"]["combined"]["kl_from_combined"] == pytest.approx(0.0, abs=1e-6)
    text = format_merge_report(rep)
    assert "Share of the specialists' gain" in text and "inference cost" in text


@pytest.mark.parametrize("means,kept", [
    ((0.80, 0.82, 0.86, 0.85), 0.75),  # 3 of the 4 points of gain kept
    ((0.80, 0.82, 0.86, 0.82), 0.0),  # the merge gained only what extra training gains
    ((0.80, 0.82, 0.86, 0.80), -0.5),  # worse than the control
    ((0.80, 0.82, 0.82, 0.85), None),  # the specialists gained nothing: nothing to keep
    ((0.80, 0.82, 0.81, 0.85), None),  # they lost: a ratio of two losses is no share
])
def test_gain_kept_known_answers(means, kept):
    got = gain_kept(np.array(means))
    assert got is None if kept is None else got == pytest.approx(kept)


def test_the_share_is_undefined_when_the_specialists_lose():
    # columns: generalist, control, combined, merged; combined wrong wherever control is right
    correct = np.zeros((100, 4))
    correct[:80, 1] = 1  # control 80%
    correct[:70, 2] = 1  # combined 70%
    correct[:75, 3] = 1
    r = paired_bootstrap(correct, gain_kept, n_resamples=50)
    assert r["estimate"] is None and r["low"] is None and r["n_undefined"] == 50


def _gain(low, high, est=0.01):
    return {"estimate": est, "low": low, "high": high, "n_resamples": 100, "n_undefined": 0}


@pytest.mark.parametrize("low,warned", [(-0.002, True), (0.0, True), (0.004, False)])
def test_a_share_of_a_gain_indistinguishable_from_zero_is_flagged(low, warned):
    sys = {"params": 10, "accuracy": 0.9, "nll": 0.3, "kl_from_combined": 0.0}
    rep = {"n_specialists": 2, "systems": {k: dict(sys) for k in ("generalist", "control",
                                                                    "combined", "merged")},
           "inference_params": {"merged": 10, "combined": 30}, "combined_gain": _gain(low, 0.02),
           "merged_gain": _gain(-0.01, 0.02), "gain_kept": _gain(-5.0, 9.0, est=13.0), "n": 1000,
           "top_n": 1}
    assert ("ratio of noise" in format_merge_report(rep)) is warned


NOISY = ViewConfig(noise=0.5, mixup=0.4, views=2, seed=3)  # views of the synthetic vectors


def test_on_views_q_is_the_combination_of_each_regenerated_view_and_the_control_sees_them_too(
        setup, tmp_path, monkeypatch):
    seen = []
    real_train = distill_module.train

    def spy(model, batches, config, **kw):
        objective = kw.get("objective", default_objective)
        record = []
        seen.append(record)

        def watched(logits, batch):
            record.append((batch.x.clone(), batch.idx.clone(), batch.view.clone()))
            return objective(logits, batch)

        return real_train(model, batches, config, **{**kw, "objective": watched})

    monkeypatch.setattr(distill_module, "train", spy)
    transfer = setup["transfer"]
    res = distill_specialists(setup["gen"], setup["specs"], transfer, FAST,
                              MergeConfig(control="labels", views=NOISY), tmp_path)
    merged, ctrl = seen
    assert len(merged) == len(ctrl) > 0
    for (xm, im, vm), (xc, ic, vc) in zip(merged, ctrl, strict=True):
        assert torch.equal(xm, xc) and torch.equal(im, ic) and torch.equal(vm, vc)
        # views, not the transfer rows, and each one regenerated from its key
        assert not torch.allclose(xm, transfer.x[im])
        assert torch.equal(xm, make_views(transfer.x, im, vm, NOISY)[0])
    # the q-cache holds log q of every view: the combination run on the regenerated view
    idx, view = torch.tensor([0, 7, 7, 123]), torch.tensor([0, 0, 1, 1])
    with open_cache(tmp_path / "q_cache", res.q_fingerprint) as cache:
        assert cache.n_views == 2
        cached = torch.softmax(cache.batch(cache.rows(idx, view))[0], -1)
    direct = torch.softmax(predict_logits(res.combined, make_views(transfer.x, idx, view, NOISY)[0]),
                           -1)
    torch.testing.assert_close(cached, direct, rtol=1e-5, atol=1e-6)


def test_a_plain_merge_is_not_taken_for_one_on_views(setup, tmp_path):
    gen, specs, transfer = setup["gen"], setup["specs"], setup["transfer"]
    one = TrainConfig(epochs=1, batch_size=64)
    plain = distill_specialists(gen, specs, transfer, one, MergeConfig(control="labels"), tmp_path)
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    with pytest.raises(ValueError, match="trained from other models or data"):
        distill_specialists(gen, specs, transfer, one, MergeConfig(control="labels", views=NOISY),
                            tmp_path)
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before
    # plain views are the plain merge: same q fingerprint, loaded
    again = distill_specialists(gen, specs, transfer, one,
                                MergeConfig(control="labels", views=ViewConfig()), tmp_path)
    assert again.q_fingerprint == plain.q_fingerprint


@pytest.mark.parametrize(("views", "match"), [
    (ViewConfig(shift=1, views=2), "image"),  # shifts need images; the transfer set is vectors
    (ViewConfig(noise=0.1, views=None), "number of views"),
    (ViewConfig(mixup=-1.0, views=2), "mixup"),
])
def test_views_that_do_not_fit_are_one_line_and_write_nothing(setup, tmp_path, views, match):
    with pytest.raises(ValueError, match=match) as err:
        distill_specialists(**_bad(setup, config=MergeConfig(views=views)),
                            out_dir=tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
