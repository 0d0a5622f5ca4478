"""``ensemble-kd distill-specialists``: the command end to end, and its refusals (one line, no
traceback, exit 2, nothing written)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ensemble_kd.checkpoint import save_model
from ensemble_kd.cli import main
from ensemble_kd.data import load_dataset
from ensemble_kd.ensemble import ModelSpec, data_meta, train_ensemble
from ensemble_kd.io import atomic_write_json
from ensemble_kd.train import TrainConfig

DATA = ["--dataset", "synthetic", "--synthetic-classes", "6", "--synthetic-groups", "2",
        "--synthetic-train", "1200", "--synthetic-seed", "0", "--val-fraction", "0.2",
        "--data-seed", "0"]  # fmt: skip
MERGE = ["--merge-epochs", "1", "--merge-batch-size", "64", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def spec_run(tmp_path_factory):
    """A train-specialists run (one specialist) and the generalist file it was trained from."""
    root = tmp_path_factory.mktemp("merge_cli")
    splits = load_dataset("synthetic", val_fraction=0.2, seed=0, n_classes=6, n_groups=2,
                          n_train=1200, synthetic_seed=0)
    torch.manual_seed(0)
    (gen,) = train_ensemble(splits, ModelSpec("mlp", (32,), 0.0), 1,
                            TrainConfig(epochs=2, batch_size=64, lr=3e-3), root / "teachers")
    save_model(root / "generalist.pt", gen, data_meta(splits))
    atomic_write_json(root / "subsets.json", {"subsets": [splits.groups[0]]})
    rc = main(["train-specialists", *DATA, "--out", str(root / "run"), "--generalist",
               str(root / "generalist.pt"), "--subsets", str(root / "subsets.json"), "--epochs",
               "1", "--batch-size", "64", "--device", "cpu", "--quiet"])
    assert rc == 0
    return {"run": root / "run", "generalist": root / "generalist.pt", "root": root}


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(capsys, argv, match):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert match in err, err
    return err


def test_distill_specialists_writes_the_comparison_beside_the_run(spec_run, capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(spec_run["run"], run)
    assert main(["distill-specialists", "--run", str(run), "--generalist",
                 str(spec_run["generalist"]), *MERGE]) == 0
    out = capsys.readouterr().out
    assert "merged (one model, distilled on q)" in out and "inference cost" in out
    summary = json.loads((run / "merged" / "summary.json").read_text())
    assert set(summary["systems"]) == {"generalist", "control", "combined", "merged"}
    assert summary["settings"]["control"] == "self"  # a generalist file that records no role
    assert summary["systems"]["merged"]["params"] == summary["systems"]["generalist"]["params"]
    assert {"estimate", "low", "high"} <= set(summary["gain_kept"])
    assert (run / "merged" / "summary.md").exists()
    # a second time without --resume: refused, nothing changed
    before = _snapshot(run)
    _refused(capsys, ["distill-specialists", "--run", str(run), "--generalist",
                      str(spec_run["generalist"]), *MERGE], "already holds a run")
    assert _snapshot(run) == before


def test_a_train_specialists_run_needs_its_generalist(spec_run, capsys):
    before = _snapshot(spec_run["run"])
    _refused(capsys, ["distill-specialists", "--run", str(spec_run["run"]), *MERGE],
             "pass --generalist")
    assert _snapshot(spec_run["run"]) == before


def test_another_generalist_is_refused(spec_run, capsys, tmp_path):
    torch.manual_seed(1)
    splits = load_dataset("synthetic", val_fraction=0.2, seed=0, n_classes=6, n_groups=2,
                          n_train=1200, synthetic_seed=0)
    other = ModelSpec("mlp", (32,), 0.0).build(splits.input_shape, splits.n_classes)
    save_model(tmp_path / "other.pt", other, data_meta(splits))
    before = _snapshot(spec_run["run"])
    _refused(capsys, ["distill-specialists", "--run", str(spec_run["run"]), "--generalist",
                      str(tmp_path / "other.pt"), *MERGE], "is not the generalist")
    assert _snapshot(spec_run["run"]) == before


def test_a_run_without_specialists_is_refused(spec_run, capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(spec_run["run"] / "config.json", run / "config.json")
    _refused(capsys, ["distill-specialists", "--run", str(run), "--generalist",
                      str(spec_run["generalist"]), *MERGE], "has no specialists")
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]
    _refused(capsys, ["distill-specialists", "--run", str(tmp_path / "nowhere"), *MERGE],
             "no such run folder")


def test_invalid_subsets_are_refused(spec_run, capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(spec_run["run"], run)
    manifest = json.loads((run / "specialists" / "subsets.json").read_text())
    manifest["subsets"] = [[0, 99]]
    atomic_write_json(run / "specialists" / "subsets.json", manifest)
    before = _snapshot(run)
    _refused(capsys, ["distill-specialists", "--run", str(run), "--generalist",
                      str(spec_run["generalist"]), *MERGE], "subset")
    assert _snapshot(run) == before


def test_bad_merge_options_are_refused(spec_run, capsys):
    before = _snapshot(spec_run["run"])
    for flag, value, match in (("--merge-alpha", "1.5", "alpha"),
                               ("--merge-control", "nope", "merge_control"),
                               ("--merge-control", "teachers", "teachers")):
        _refused(capsys, ["distill-specialists", "--run", str(spec_run["run"]), "--generalist",
                          str(spec_run["generalist"]), *MERGE, flag, value], match)
    assert _snapshot(spec_run["run"]) == before


def test_merge_views_are_opt_in_and_recorded(spec_run, capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(spec_run["run"], run)
    assert main(["distill-specialists", "--run", str(run), "--generalist",
                 str(spec_run["generalist"]), *MERGE, "--view-noise", "0.3",
                 "--merge-views", "2"]) == 0
    summary = json.loads((run / "merged" / "summary.json").read_text())
    assert summary["settings"]["views"]["views"] == 2
    assert summary["settings"]["views"]["noise"] == pytest.approx(0.3)
    meta = json.loads((run / "merged" / "q_cache" / "meta.json").read_text())
    assert meta["views"] == summary["settings"]["views"]  # q cached for each of the 2 views
    assert "cached views of every transfer example (noise=0.3, views=2)" in (
        run / "merged" / "summary.md").read_text()
    # the default: the transfer set as it is, whatever views were given
    plain = tmp_path / "plain"
    shutil.copytree(spec_run["run"], plain)
    assert main(["distill-specialists", "--run", str(plain), "--generalist",
                 str(spec_run["generalist"]), *MERGE, "--view-noise", "0.3"]) == 0
    assert json.loads((plain / "merged" / "summary.json").read_text())["settings"]["views"] is None


def test_merge_views_without_augmentation_are_refused(spec_run, capsys):
    before = _snapshot(spec_run["run"])
    for extra, match in ((["--merge-views", "3"], "needs augmented views"),
                         (["--merge-views", "0"], "merge_views must be >= 1"),
                         (["--merge-views", "2", "--view-shift", "1"], "image")):
        _refused(capsys, ["distill-specialists", "--run", str(spec_run["run"]), "--generalist",
                          str(spec_run["generalist"]), *MERGE, *extra], match)
    assert _snapshot(spec_run["run"]) == before
