"""Distillation settings chosen on validation: grids, the kept candidate, resume, the CLI's lists."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_blobs

from ensemble_kd.batching import TensorBatches
from ensemble_kd.cli import main
from ensemble_kd.data import TransferSet
from ensemble_kd.distill import DistillConfig
from ensemble_kd.models import build_model
from ensemble_kd.predict import predict_logits
from ensemble_kd.sweep import (
    AUTO_ALPHAS,
    AUTO_TEMPERATURES,
    Candidate,
    best_candidate,
    candidate_configs,
    distill_sweep,
    resolve_grid,
    without_labels,
)
from ensemble_kd.train import TrainConfig, evaluate_logits, train


def test_grid_values_auto_and_bad_lists():
    assert resolve_grid([4, 2], AUTO_TEMPERATURES, "temperature") == [4.0, 2.0]
    assert resolve_grid("auto", AUTO_TEMPERATURES, "temperature") == [1.0, 2.0, 4.0, 8.0]
    assert resolve_grid("auto", AUTO_ALPHAS, "alpha") == [0.5, 0.9]
    with pytest.raises(ValueError, match="temperature lists 2 more than once"):
        resolve_grid([2, 4, 2], AUTO_TEMPERATURES, "temperature")
    with pytest.raises(ValueError, match="alpha needs at least one value"):
        resolve_grid([], AUTO_ALPHAS, "alpha")
    with pytest.raises(ValueError, match="numbers or 'auto'"):
        resolve_grid("best", AUTO_ALPHAS, "alpha")


def test_candidates_cover_the_grid_and_refuse_alpha_zero_in_a_sweep():
    cfgs = candidate_configs(DistillConfig(), [1.0, 4.0], [0.5, 0.9])
    assert [(c.temperature, c.alpha) for c in cfgs] == [(1, .5), (1, .9), (4, .5), (4, .9)]
    assert len(candidate_configs(DistillConfig(), [4.0], [0.0])) == 1  # alone: allowed
    with pytest.raises(ValueError, match="sweep needs alpha > 0"):
        candidate_configs(DistillConfig(), [2.0, 4.0], [0.0])
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        candidate_configs(DistillConfig(), [0.0, 4.0], [0.5])


def test_best_candidate_by_accuracy_then_nll_then_order():
    c = [Candidate(1, .5, 0.90, 0.30, "a"), Candidate(2, .5, 0.92, 0.40, "b"),
         Candidate(4, .5, 0.92, 0.35, "c"), Candidate(8, .5, 0.92, 0.35, "d")]
    assert best_candidate(c) == 2  # highest accuracy; lower NLL breaks the tie; then the earlier
    assert best_candidate(c[:1]) == 0


def _problem():
    x, y = make_blobs(n=300, dim=6, n_classes=3, seed=3)
    torch.manual_seed(0)
    teacher = build_model("mlp", (6,), 3, widths=[16])
    train(teacher, TensorBatches(x[:240], y[:240], batch_size=32),
          TrainConfig(epochs=5, lr=1e-2), progress=False)
    transfer = TransferSet(x[:240], y[:240], torch.arange(240))
    return [teacher], transfer, (x[240:], y[240:])


def _student():
    torch.manual_seed(1)
    return build_model("mlp", (6,), 3, widths=[4])


def test_the_kept_candidate_is_the_best_on_validation(tmp_path):
    teachers, transfer, val = _problem()
    cfgs = candidate_configs(DistillConfig(), [1.0, 8.0], [0.1, 0.9])
    res = distill_sweep(_student, teachers, transfer, TrainConfig(epochs=2, lr=1e-2), cfgs,
                        val=val, run_dir=tmp_path / "s")
    assert len(res.candidates) == 4 and len({c.folder for c in res.candidates}) == 4
    # each candidate's recorded score is its own model's (re-evaluated from its saved file)
    from ensemble_kd.run import Run
    for c in res.candidates:
        model = Run(c.folder).load_finished()[0]
        v = evaluate_logits(predict_logits(model, val[0]), val[1])
        assert v["acc"] == pytest.approx(c.val_acc) and v["nll"] == pytest.approx(c.val_nll)
    best = max(res.candidates, key=lambda c: (c.val_acc, -c.val_nll))
    assert res.candidates[res.best] == best
    kept = evaluate_logits(predict_logits(res.model, val[0]), val[1])
    assert kept["acc"] == pytest.approx(best.val_acc)
    assert (tmp_path / "s" / "cache" / "meta.json").exists()  # one cache for every candidate


def test_the_default_grids_are_the_clis_auto_grids():
    cfgs = candidate_configs(DistillConfig())
    assert [(c.temperature, c.alpha) for c in cfgs] == [
        (t, a) for t in (1, 2, 4, 8) for a in (0.5, 0.9)]


def test_without_labels_alpha_changes_nothing_so_one_candidate_per_temperature(tmp_path):
    cfgs = candidate_configs(DistillConfig(), [2.0, 4.0], [0.5, 0.9])
    assert [(c.temperature, c.alpha) for c in without_labels(cfgs)] == [(2, .9), (4, .9)]
    # the loss ignores alpha without labels: two alphas would train bit-identical students
    teachers, transfer, val = _problem()
    unlabelled = TransferSet(transfer.x, None, transfer.indices)
    tcfg = TrainConfig(epochs=1, lr=1e-2)
    res = distill_sweep(_student, teachers, unlabelled, tcfg, cfgs, val=val, run_dir=tmp_path / "u")
    assert [(c.temperature, c.alpha) for c in res.candidates] == [(2, .9), (4, .9)]
    from ensemble_kd.distill import distill
    a, b = (distill(_student(), teachers, unlabelled, tcfg, DistillConfig(temperature=2.0, alpha=al),
                    run_dir=tmp_path / f"d{al}", progress=False).model for al in (0.5, 0.9))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_two_sweeps_share_one_teacher_cache(tmp_path, monkeypatch):
    """``cache_dir``: a second sweep of another student from the same teachers reads the first
    sweep's cache instead of running the teachers again."""
    teachers, transfer, val = _problem()
    cfgs = candidate_configs(DistillConfig(), [2.0, 4.0], [0.5])
    tcfg = TrainConfig(epochs=1, lr=1e-2)
    cache = tmp_path / "shared_cache"
    distill_sweep(_student, teachers, transfer, tcfg, cfgs, val=val, run_dir=tmp_path / "a",
                  cache_dir=cache)
    assert (cache / "meta.json").exists() and not (tmp_path / "a" / "cache").exists()
    import ensemble_kd.cache as cache_mod
    monkeypatch.setattr(cache_mod, "write_cache", lambda *a, **k: pytest.fail("cache rebuilt"))
    res = distill_sweep(_student, teachers, transfer, tcfg, cfgs, val=val, run_dir=tmp_path / "b",
                        cache_dir=cache)
    assert len(res.candidates) == 2 and not (tmp_path / "b" / "cache").exists()


def test_a_sweep_resumes_without_retraining_finished_candidates(tmp_path, monkeypatch):
    teachers, transfer, val = _problem()
    cfgs = candidate_configs(DistillConfig(), [2.0, 4.0], [0.5])
    tcfg = TrainConfig(epochs=2, lr=1e-2)
    first = distill_sweep(_student, teachers, transfer, tcfg, cfgs, val=val, run_dir=tmp_path / "s")
    # the second candidate is "interrupted": its finished model is removed, its checkpoint stays
    (tmp_path / "s" / "candidates" / "T4-a0.5" / "model.pt").unlink()
    import ensemble_kd.sweep as sweep_mod
    calls = []
    real = sweep_mod.distill

    def spy(student, teachers, transfer, train_config, cfg, **kw):
        calls.append(cfg.temperature)
        return real(student, teachers, transfer, train_config, cfg, **kw)

    monkeypatch.setattr(sweep_mod, "distill", spy)
    again = distill_sweep(_student, teachers, transfer, tcfg, cfgs, val=val, run_dir=tmp_path / "s")
    assert calls == [4.0]  # only the unfinished one; it resumes from its last checkpoint
    assert again.candidates == first.candidates  # and ends exactly where it had


def test_cli_lists_auto_and_bad_values(tmp_path, capsys):
    common = ["run", "--no-specialists", "--teachers", "1", "--teacher-arch", "mlp",
              "--teacher-widths", "8", "--teacher-epochs", "1", "--student-widths", "4",
              "--epochs", "1", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "a"), "--temperature", "1", "3",
                 "--alpha", "0.7"]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert [c["temperature"] for c in summary["candidates"]] == [1.0, 3.0]
    assert summary["distilled_temperature"] in (1.0, 3.0) and summary["distilled_alpha"] == 0.7
    for key in ("baseline_accuracy", "distilled_accuracy", "ensemble_accuracy", "agreement",
                "kl_to_ensemble", "student_ms_per_256", "ensemble_params"):
        assert key in summary
    assert "| T | alpha |" in (tmp_path / "a" / "summary.md").read_text()
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())["config"]
    assert cfg["temperature"] == [1.0, 3.0] and cfg["alpha"] == [0.7]
    for bad, msg in ((["--temperature", "2", "2"], "temperature lists 2 more than once"),
                     (["--alpha", "0", "0.5"], "sweep needs alpha > 0"),
                     (["--temperature", "hot"], "expected a number or auto")):
        capsys.readouterr()
        assert main([*common, "--out", str(tmp_path / "bad"), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1
        assert not (tmp_path / "bad").exists()  # nothing written


def _fixed(weight: float) -> torch.nn.Module:
    """A 3-class 'model' of one-hot inputs: weight > 0 answers the input's class, 0 always class 0."""
    m = torch.nn.Linear(3, 3)
    with torch.no_grad():
        m.weight.copy_(weight * torch.eye(3))
        m.bias.zero_()
    return m


def test_a_distilled_student_worse_than_its_baseline_is_said_with_what_to_try(capsys):
    from types import SimpleNamespace

    from ensemble_kd.cli.summary import _verdict

    y = torch.tensor([0, 1, 2, 1, 0, 2, 1, 2])
    splits = SimpleNamespace(x_val=torch.nn.functional.one_hot(y, 3).float(), y_val=y)
    ctx = SimpleNamespace(device="cpu")
    cands = [{"temperature": t, "alpha": 0.5, "val_acc": 0.25, "val_nll": 1.0} for t in (1.0, 2.0)]
    meta = {"candidates": cands, "temperature": 1.0, "alpha": 0.5}
    out = _verdict(ctx, splits, _fixed(5.0), _fixed(0.0), meta)  # baseline 100%, student 25%
    assert out["baseline_val_accuracy"] == 1.0 and out["distilled_val_accuracy"] == 0.25
    warning = out["warning"]
    assert "worse than its hard-label baseline" in warning and "(25.00% vs 100.00%)" in warning
    assert "--temperature 1" in warning and "--alpha auto" not in warning  # it swept already
    assert warning in capsys.readouterr().err  # on the terminal too, even with --quiet
    single = _verdict(ctx, splits, _fixed(5.0), _fixed(0.0), {"temperature": 4.0, "alpha": 0.9})
    assert "--temperature auto --alpha auto" in single["warning"]  # one setting: try several
    assert "warning" not in _verdict(ctx, splits, _fixed(5.0), _fixed(5.0), meta)  # a tie: none
